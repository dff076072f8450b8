"""``ddpm remote ...``: use a running service from the shell, through :mod:`app.client`.

The service URL comes from ``--url`` or ``$DDPM_URL``, keys from ``$DDPM_API_KEY`` and
``$DDPM_ADMIN_TOKEN`` (never from the command line, where other users could read
them). Exit codes: 0 ok; 2 bad input (the service's 422 with its field and reason, an
unknown job or checkpoint, a refused token); 1 the job failed or was canceled, or the
service is unreachable. Each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.cli.common import UsageError
from app.cli.offline import FORMAT_FLAGS, SAMPLE_FLAGS, check_format_args
from app.cli.options import add_generate_flags, generate_values

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``remote`` and its sub-commands on a sub-parser set."""
    p = sub.add_parser("remote", help="use a running service over HTTP (generate, train, jobs)")
    rsub = p.add_subparsers(dest="remote_command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=None, help="service URL (default: $DDPM_URL, else http://127.0.0.1:8000)"
    )
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument("--no-progress", action="store_true", help="no progress bar")
    hook = argparse.ArgumentParser(add_help=False)
    hook.add_argument(
        "--webhook", default=None, metavar="URL", help="POST the signed job document here"
    )
    hook.add_argument(
        "--webhook-events",
        default=None,
        metavar="EVENTS",
        help="comma list of start, progress, completed (default: completed)",
    )

    g = rsub.add_parser(
        "generate",
        parents=[common, progress, hook],
        help="generate images on the service; writes the files `ddpm sample` writes",
    )
    g.add_argument(
        "checkpoint", nargs="?", default=None, help="name or name@version (default: the service's)"
    )
    g.add_argument("-o", "--out", type=Path, default=Path("samples"), help="output directory")
    add_generate_flags(g, [*SAMPLE_FLAGS, "use_ema"], remote=True)
    g.add_argument("--nrow", type=int, default=None, help="images per grid row")
    add_generate_flags(g, ["trajectory_frames", *FORMAT_FLAGS], remote=True)
    g.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cancel the job if it has not started within SECONDS",
    )
    g.add_argument("--no-wait", action="store_true", help="print the job id and exit")
    g.set_defaults(func=_guard(cmd_generate))

    t = rsub.add_parser(
        "train", parents=[common, progress, hook], help="start a training run (admin token needed)"
    )
    t.add_argument("name", help="checkpoint name; the run publishes name@N+1")
    t.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training option (see POST /train), the value as JSON or a string; repeatable",
    )
    t.add_argument("--options", dest="options_json", help="training options as a JSON object")
    t.add_argument("--resume-from", default=None, help="checkpoint name@version to fine-tune")
    t.add_argument("--follow", action="store_true", help="show progress until the run ends")
    t.set_defaults(func=_guard(cmd_train))

    j = rsub.add_parser("job", parents=[common], help="show a job")
    j.add_argument("job_id")
    j.add_argument("--json", action="store_true", help="print the job document")
    j.set_defaults(func=_guard(cmd_job))

    c = rsub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    c.add_argument("job_id")
    c.set_defaults(func=_guard(cmd_cancel))

    w = rsub.add_parser(
        "wait", parents=[common, progress], help="wait for a job; exit 0 if it succeeded"
    )
    w.add_argument("job_id")
    w.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    w.add_argument("-o", "--out", type=Path, default=None, help="then save its files here")
    w.set_defaults(func=_guard(cmd_wait))

    k = rsub.add_parser("checkpoints", parents=[common], help="list the service's checkpoints")
    k.add_argument("name", nargs="?", help="show one checkpoint's versions")
    k.add_argument("--json", action="store_true", help="print JSON")
    k.set_defaults(func=_guard(cmd_checkpoints))


# -- errors and exit codes ------------------------------------------------------------------
def _fail(message: str, code: int) -> int:
    print(f"ddpm: error: {message}", file=sys.stderr)
    return code


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the client's errors into one line on stderr and the exit code."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from app.client import ApiError, ClientError, JobFailed, ServiceUnreachable

        try:
            return fn(args)
        except ApiError as exc:
            where = f"{exc.field}: " if exc.field else ""
            bad_input = 400 <= exc.status < 500 and exc.status != 429
            return _fail(f"{where}{exc.reason} (HTTP {exc.status})", 2 if bad_input else 1)
        except (JobFailed, ServiceUnreachable, TimeoutError) as exc:
            return _fail(str(exc), 1)
        except ClientError as exc:  # the client's own configuration: URL, missing token
            raise UsageError(str(exc)) from None
        except OSError as exc:  # writing the outputs
            return _fail(f"cannot write the results: {exc}", 1)

    return run


def _client(args: argparse.Namespace):
    from app.client import Client

    return Client(args.url)


class _Bar:
    """A tqdm bar fed with :class:`app.client.Progress` reports (steps; loss for training)."""

    def __init__(self, disable: bool, unit: str, desc: str) -> None:
        self.disable, self.unit, self.desc = disable, unit, desc
        self.bar: Any = None

    def __call__(self, p: Any) -> None:
        # A job waiting for its worker's engine (progress.waiting) gets its bar when it runs.
        if self.disable or not p.total or p.data.get("waiting"):
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, unit=self.unit, desc=self.desc, dynamic_ncols=True)
        self.bar.total = p.total
        self.bar.update(max(0, p.step - self.bar.n))
        if p.loss is not None:
            post = {"loss": f"{p.loss:.4f}"} | ({"lr": f"{p.lr:.2e}"} if p.lr is not None else {})
            self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _follow(job: Any, args: argparse.Namespace, unit: str, timeout: float | None = None) -> None:
    """Wait for ``job`` with a progress bar; on Ctrl-C say that the job goes on."""
    bar = _Bar(args.no_progress, unit, job.id[:8])
    try:
        job.wait(timeout=timeout, on_progress=bar)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\njob {job.id} goes on in the service; `ddpm remote cancel {job.id}` stops it",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()


def _out_dir(path: Path) -> None:
    """Fail before submitting when the output directory cannot be used."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None


def _regrid(images: list[Any], nrow: int) -> Any:
    """Tile PIL images as ``ddpm_core.images.make_grid`` does (padding 2, white)."""
    from PIL import Image

    pad = 2
    w, h = images[0].size
    ncol = -(-len(images) // nrow)
    white = 255 if images[0].mode == "L" else (255,) * len(images[0].getbands())
    grid = Image.new(images[0].mode, (nrow * (w + pad) + pad, ncol * (h + pad) + pad), white)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        grid.paste(img, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


# -- commands -------------------------------------------------------------------------------
def _webhook(args: argparse.Namespace) -> dict[str, Any]:
    """``--webhook`` and ``--webhook-events`` as the client's arguments (the service checks
    them: a bad one is its 422)."""
    events = args.webhook_events
    if events is not None and args.webhook is None:
        raise UsageError("--webhook-events needs --webhook")
    return {
        "webhook": args.webhook,
        "webhook_events": [e.strip() for e in events.split(",")] if events else None,
    }


def cmd_generate(args: argparse.Namespace) -> int:
    """Submit, follow with a progress bar, save ``ddpm sample``'s files."""
    if args.nrow is not None and args.nrow < 1:
        raise UsageError("--nrow must be >= 1")
    check_format_args(args)
    if not args.no_wait:
        _out_dir(args.out)
    started = time.perf_counter()
    with _client(args) as client:
        options = generate_values(args)  # None: the service's (the checkpoint's) default
        options["trajectory_frames"] = options["trajectory_frames"] or None
        job = client.generate(**options, **_webhook(args), deadline_seconds=args.deadline)
        if args.no_wait:
            print(job.id)
            return 0
        _follow(job, args, "step")
        written = job.save(args.out)
        grid = next((p for p in written if p.stem == "grid"), args.out / "grid.png")
        if args.nrow is not None:
            _regrid(job.images(), args.nrow).save(grid, quality=args.output_quality)
    elapsed = time.perf_counter() - started
    req = job.request
    print(
        f"{len((job.result or {}).get('images') or [])} images in "
        f"{elapsed:.2f}s (job {job.id}, {req.get('steps')} {req.get('sampler')} steps, "
        f"{req.get('checkpoint')}) -> {grid}"
    )
    return 0


def _parse_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.options_json:
        try:
            options = json.loads(args.options_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--options is not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise UsageError("--options must be a JSON object")
    for item in args.options:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set wants KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def cmd_train(args: argparse.Namespace) -> int:
    """Start a training run; with ``--follow`` show loss and steps until it ends."""
    options = _parse_options(args)
    with _client(args) as client:
        job = client.train(args.name, options, resume_from=args.resume_from, **_webhook(args))
        if not args.follow:
            print(job.id)
            return 0
        started = time.perf_counter()
        _follow(job, args, "step")
    result = job.result or {}
    loss = result.get("final_loss")
    print(
        f"published {result.get('checkpoint')} in {time.perf_counter() - started:.1f}s"
        + (f", final loss {loss:.4f}" if isinstance(loss, int | float) else "")
        + f" (job {job.id})"
    )
    return 0


def _summary(doc: dict[str, Any]) -> str:
    p = doc.get("progress") or {}
    lines = [f"job {doc['id']}  {doc['kind']}  {doc['status']}"]
    if doc["status"] == "queued" and doc.get("queue_position") is not None:
        lines[0] += f" (position {doc['queue_position']})"
    if p.get("total"):
        eta = doc.get("eta_seconds")
        lines.append(
            f"  progress  {p.get('step', 0)}/{p['total']}"
            + (f"  eta {eta:.1f}s" if isinstance(eta, int | float) else "")
        )
    req = doc.get("request") or {}
    shown = {k: v for k, v in req.items() if v is not None and k not in ("image_size", "channels")}
    lines.append("  request   " + " ".join(f"{k}={json.dumps(v)}" for k, v in shown.items()))
    result = doc.get("result") or {}
    if result.get("images"):
        lines.append(f"  result    {len(result['images'])} images, grid {result.get('grid_url')}")
    if result.get("checkpoint"):
        lines.append(f"  result    {result['checkpoint']} (final loss {result.get('final_loss')})")
    if doc.get("error"):
        lines.append(f"  error     {doc['error'].get('type')}: {doc['error'].get('message')}")
    return "\n".join(lines)


def cmd_job(args: argparse.Namespace) -> int:
    """Print a job (a summary, or its document with ``--json``)."""
    with _client(args) as client:
        doc = client.job(args.job_id).doc
    print(json.dumps(doc, indent=2) if args.json else _summary(doc))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job; a running one stops at its next step."""
    with _client(args) as client:
        job = client.job(args.job_id).cancel()
    if job.status == "canceled":
        print(f"job {job.id} canceled")
    else:
        print(f"job {job.id} {job.status}: cancel requested, it stops at its next step")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait for a job with a progress bar; 0 when it succeeded, 1 when it did not."""
    with _client(args) as client:
        job = client.job(args.job_id)
        _follow(job, args, "step", timeout=args.timeout)
        if args.out is not None:
            _out_dir(args.out)
            job.save(args.out)
    where = f" -> {args.out}" if args.out is not None else ""
    print(f"job {job.id} {job.status}{where}")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """The service's checkpoints, as ``ddpm checkpoints`` prints the local registry."""
    with _client(args) as client:
        items = [client.checkpoint(args.name)] if args.name else client.checkpoints()
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    print(f"{'checkpoint':<32} {'size':>7} {'classes':>7}  created")
    for item in items:
        for v in item["versions"]:
            cfg, meta = v.get("config") or {}, v.get("meta") or {}
            star = " *" if v["version"] == item["latest"] else ""
            ref = f"{item['name']}@{v['version']}{star}"
            size = f"{cfg.get('channels', '?')}x{cfg.get('image_size', '?')}"
            classes = cfg.get("num_classes") or "-"
            print(f"{ref:<32} {size:>7} {classes:>7}  {meta.get('created_at', '')}")
    return 0
