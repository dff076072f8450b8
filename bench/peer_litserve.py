"""The peer of bench/peer.py: diffusers' pipelines behind LitServe, as a user would write it.

POST /predict {"seed": 1, "steps": 20, "sampler": "ddim"} answers one PNG. LitServe
batches up to --max-batch-size requests (waiting at most --batch-timeout s); a batch is
split by (sampler, steps) and each group is one pipeline call.

    python bench/peer_litserve.py MODEL_DIR --port 8001 --threads 2 [--bf16]

--bf16 runs the pipelines under torch.autocast("cpu", dtype=torch.bfloat16), the one
line a user who knows the CPU has bf16 would add.
"""

import argparse
import contextlib
import io
from collections import defaultdict

import litserve as ls
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DPMSolverMultistepScheduler
from fastapi import Response


class DiffusionAPI(ls.LitAPI):
    def __init__(self, model_dir: str, threads: int, bf16: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_dir, self.threads, self.bf16 = model_dir, threads, bf16

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        ddpm = DDPMPipeline.from_pretrained(self.model_dir).to(device)
        unet, config = ddpm.unet, ddpm.scheduler.config
        self.pipes = {
            "ddpm": ddpm,
            "ddim": DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(config)),
            "dpm++2m": DDPMPipeline(
                unet=unet, scheduler=DPMSolverMultistepScheduler.from_config(config)
            ),
        }
        for pipe in self.pipes.values():
            pipe.set_progress_bar_config(disable=True)

    def decode_request(self, request: dict) -> tuple[str, int, int]:
        return request.get("sampler", "ddim"), int(request.get("steps", 20)), int(request["seed"])

    def predict(self, batch: list[tuple[str, int, int]]) -> list:
        groups = defaultdict(list)  # one pipeline call per (sampler, steps)
        for i, (sampler, steps, _) in enumerate(batch):
            groups[sampler, steps].append(i)
        images = [None] * len(batch)
        for (sampler, steps), rows in groups.items():
            generators = [torch.Generator().manual_seed(batch[i][2]) for i in rows]
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if self.bf16
                else contextlib.nullcontext()
            )
            with torch.inference_mode(), autocast:
                out = self.pipes[sampler](
                    batch_size=len(rows), generator=generators, num_inference_steps=steps
                ).images
            for i, image in zip(rows, out, strict=True):
                images[i] = image
        return images

    def encode_response(self, image) -> Response:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return Response(content=buf.getvalue(), media_type="image/png")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", help="a diffusers DDPMPipeline directory")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-timeout", type=float, default=0.05)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast of the pipelines")
    args = ap.parse_args()
    api = DiffusionAPI(
        args.model_dir,
        args.threads,
        args.bf16,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    # timeout: a request may queue longer than the default 30 s behind 64 others.
    server = ls.LitServer(api, accelerator="cpu", timeout=300)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)
