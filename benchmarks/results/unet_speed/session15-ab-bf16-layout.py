"""In-process interleaved A/B: the small U-Net's bf16 autocast training step, NCHW (before session
15) against channels-last (the compiled bf16 channels-last group-norm backward + Winograd
convolutions). Medians of 5 steps per round, the two layouts alternating round by round.

Usage (from the repository root): .venv/bin/python benchmarks/results/unet_speed/session15-ab-bf16-layout.py [ROUNDS]
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for unet_speed
from limner.allocator import tune_allocator

tune_allocator()
import torch

torch.set_num_threads(2)
import unet_speed as U
from limner.models.diffusion import unet as unet_mod

torch.manual_seed(0)
net, forward, prep = U.build_model("limner")
step = U._train_step(net, forward, prep, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
nchw = unet_mod.UNet._low_precision_cpu_nchw
choices = {"nchw": lambda self, x: True, "channels_last": lambda self, x: False}
res = {name: [] for name in choices}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 6):
    for name in (list(choices) if r % 2 == 0 else list(choices)[::-1]):
        unet_mod.UNet._low_precision_cpu_nchw = choices[name]
        for _ in range(2):
            step()
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            step()
            t.append(time.perf_counter() - t0)
        res[name].append(statistics.median(t))
unet_mod.UNet._low_precision_cpu_nchw = nchw
for name, v in res.items():
    print(name, "median ms", round(statistics.median(v) * 1000, 1), [round(x * 1000) for x in v])
