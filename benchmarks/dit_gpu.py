"""DiT training throughput and model FLOP utilisation on a GPU, bf16 (Peebles & Xie 2023 sizes).

One EDM training step (the denoiser ``EDMPrecond`` around ``limner.models.diffusion.dit.DiT``,
the EDM loss weighting, AdamW) on DiT's own setting: 4 x 32 x 32 latents (256 px images through
an /8 autoencoder), class-conditional (a 768-wide class vector), batch 256, under bfloat16
autocast, optionally ``torch.compile``. Reports img/s and MFU = 3 x forward FLOPs per image
(``dit.count_flops``: forward, and backward counted as twice the forward) x img/s / peak, with the
peak given by ``--peak-tflops`` (default 989, the H100/H200 SXM datasheet's dense bf16; a measured
8192^3 bf16 matmul rate is printed beside it for reference).

Usage (on the GPU machine, from the repository root):
    PYTHONPATH=src python3 benchmarks/dit_gpu.py --sizes B/2 S/2 --steps 30
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from limner.conditioning.base import Conditioning
from limner.models.diffusion.dit import DiT, count_flops, dit_config


class Denoiser(torch.nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1) around the DiT, class vector given."""

    def __init__(self, net: DiT, sigma_data: float = 1.0):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x, sigma, vector):
        s = sigma.view(-1, 1, 1, 1)
        sd2 = self.sigma_data ** 2
        c_skip, c_out = sd2 / (s ** 2 + sd2), s * self.sigma_data / (s ** 2 + sd2).sqrt()
        c_in = 1 / (s ** 2 + sd2).sqrt()
        F_x = self.net(c_in * x, sigma.log() / 4, Conditioning(vector=vector))
        return c_skip * x + c_out * F_x.float()


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12


def bench(size: str, batch: int, steps: int, compile_: bool, peak: float) -> dict:
    cfg = dit_config(size, in_channels=4, out_channels=4, resolution=32, cond_dim=768)
    model = Denoiser(DiT(cfg)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_model = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 4, 32, 32, device="cuda")
    vector = torch.randn(batch, 768, device="cuda")

    def step() -> None:
        sigma = (torch.randn(batch, device="cuda") * 1.2 - 1.2).exp()
        noisy = x + sigma.view(-1, 1, 1, 1) * torch.randn_like(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            D = step_model(noisy, sigma, vector)
        weight = (sigma ** 2 + 1) / sigma ** 2
        loss = (weight.view(-1, 1, 1, 1) * (D - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    flops = count_flops(cfg)
    img_s = batch / seconds
    return {"size": size, "batch": batch, "compiled": compile_, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops_fwd_per_image": flops / 1e9, "step_ms": seconds * 1e3, "img_per_s": img_s,
            "mfu": 3 * flops * img_s / (peak * 1e12), "peak_tflops": peak,
            "max_mem_GiB": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["B/2"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "bf16_matmul_tflops_measured": matmul_tflops(), "runs": []}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}), flush=True)
    for size in args.sizes:
        for compile_ in ([False, True] if args.compile else [False]):
            r = bench(size, args.batch, args.steps, compile_, args.peak_tflops)
            print(json.dumps(r), flush=True)
            out["runs"].append(r)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
