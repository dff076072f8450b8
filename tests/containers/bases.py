"""Local stand-ins for the images no registry can give us here, built once per machine.

No image registry is reachable, so the Dockerfiles' bases are made from Debian's own
mirror: ``debootstrap`` a minimal bookworm with Python 3.11, ``docker import`` it, then
(with plain Dockerfiles on top) a base with the CPU torch wheel that pip finds on this
machine's disk, and a Redis server image. The Dockerfiles take these through their
``BASE_IMAGE`` build argument; the compose file's Redis image name is tagged onto the
stand-in. Tags carry a hash of this recipe, so a changed recipe builds new bases.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .engine import Engine

MIRROR = "http://deb.debian.org/debian"
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
TORCH_SPEC = "torch==2.13.0"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

TORCH_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
ARG TORCH
COPY wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --find-links /tmp/wheels "${TORCH}" && rm -rf /tmp/wheels
"""

# The official image runs redis-server as user redis in /data; so does the stand-in.
REDIS_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
CMD ["redis-server"]
"""


def _recipe_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]


def _has_image(engine: Engine, tag: str) -> bool:
    return engine.docker("image", "inspect", tag, check=False).returncode == 0


def _pip_conf() -> str:
    """This machine's pip settings that reach the index (cert, index URLs, timeout);
    local paths (find-links, constraints on this disk) mean nothing inside an image."""
    out = subprocess.run(
        ["pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    keep = {"index-url", "extra-index-url", "default-timeout", "trusted-host"}
    lines = ["[global]", f"cert = {CA_BUNDLE}"]
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        value = value.strip().strip("'")
        if name in keep:
            urls = [v for v in value.split() if not v.startswith("file:")]
            if urls:
                lines.append(f"{name} = {' '.join(urls)}")
    return "\n".join(lines) + "\n"


def _debootstrap(root: Path) -> None:
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            "bookworm",
            str(root),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    bin_dir = root / "usr/local/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").symlink_to("/usr/bin/python3")
    (bin_dir / "pip").symlink_to("/usr/bin/pip3")
    # pip installs into the system Python of an image, as in the official python images.
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    shutil.copyfile(CA_BUNDLE, root / str(CA_BUNDLE).lstrip("/"))
    (root / "etc/pip.conf").write_text(_pip_conf())
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()


def _torch_wheel() -> Path:
    """The CPU wheel pip would take from this machine's find-links."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            ["pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", d, TORCH_SPEC],
            check=True,
            capture_output=True,
            timeout=600,
        )
        (wheel,) = Path(d).glob("torch-*.whl")
        if "+cpu" not in wheel.name:
            raise RuntimeError(f"{TORCH_SPEC} resolved to {wheel.name}, not the CPU wheel")
        kept = Path(tempfile.mkdtemp(prefix="ddpm-torch-")) / wheel.name
        shutil.move(wheel, kept)
        return kept


def _build(
    engine: Engine, tag: str, dockerfile: str, args: dict[str, str], files: dict[str, Path]
) -> None:
    with tempfile.TemporaryDirectory(prefix="ddpm-base-") as d:
        ctx = Path(d)
        (ctx / "Dockerfile").write_text(dockerfile)
        for name, src in files.items():
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, ctx / name)
        engine.docker(
            "build",
            "--network",
            "host",
            *(f"--build-arg={k}={v}" for k, v in args.items()),
            "-t",
            tag,
            str(ctx),
            timeout=1200,
        )


class Bases:
    """The tags of the local bases, built where missing."""

    def __init__(self, engine: Engine) -> None:
        h = _recipe_hash(MIRROR, PACKAGES, _pip_conf())
        self.engine = engine
        self.python = f"ddpm-local/python:3.11-bookworm-{h}"
        self.torch = f"ddpm-local/torch-cpu:2.13.0-{_recipe_hash(h, TORCH_SPEC, TORCH_DOCKERFILE)}"
        self.redis = f"ddpm-local/redis:bookworm-{_recipe_hash(h, REDIS_DOCKERFILE)}"
        self.built: dict[str, float] = {}  # tag -> seconds it took, for the ones built now

    def ensure(self, redis_tags: list[str]) -> None:
        if not _has_image(self.engine, self.python):
            t0 = time.monotonic()
            root = Path(tempfile.mkdtemp(prefix="ddpm-rootfs-", dir=self.engine.cache))
            try:
                _debootstrap(root)
                tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
                subprocess.run(
                    ["docker", "import", "-", self.python],
                    stdin=tar.stdout,
                    check=True,
                    capture_output=True,
                    env={**os.environ, "DOCKER_HOST": self.engine.host},
                    timeout=600,
                )
                tar.wait(60)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            self.built[self.python] = time.monotonic() - t0
        if not _has_image(self.engine, self.torch):
            t0 = time.monotonic()
            wheel = _torch_wheel()
            try:
                _build(
                    self.engine,
                    self.torch,
                    TORCH_DOCKERFILE,
                    {"BASE": self.python, "TORCH": TORCH_SPEC},
                    {f"wheels/{wheel.name}": wheel},
                )
            finally:
                shutil.rmtree(wheel.parent, ignore_errors=True)
            self.built[self.torch] = time.monotonic() - t0
        if not _has_image(self.engine, self.redis):
            t0 = time.monotonic()
            _build(self.engine, self.redis, REDIS_DOCKERFILE, {"BASE": self.python}, {})
            self.built[self.redis] = time.monotonic() - t0
        for tag in redis_tags:
            self.engine.docker("tag", self.redis, tag)
