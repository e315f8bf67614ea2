"""In-process interleaved A/B: the small U-Net's training step and sampling NFE under the fixed
rule (LIMNER_CONV_TUNE=0: every 3x3 convolution the kernels can take from 8x8 up on F(4x4, 3x3),
as before session 16) against the measured per-layer plans (limner.nn.conv_plan). Medians of 5
steps per round, the two settings alternating round by round; the shapes whose measured plan
differs from the fixed rule are printed first.

Usage (from the repository root):
  .venv/bin/python benchmarks/results/unet_speed/session16-ab-conv-plan.py fp32|bf16 train|sample [ROUNDS]
"""
import contextlib
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
from limner.nn import conv_plan

precision, mode = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
torch.manual_seed(0)
net, forward, prep = U.build_model("limner")
autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16"
            else contextlib.nullcontext)
run = (U._train_step if mode == "train" else U._sample_nfe)(net, forward, prep, autocast)
conv_plan.TUNE = True
with conv_plan.trace() as used:
    run()  # times the shapes not yet in this machine's plan file
for key, traced in sorted(used.items()):
    if traced.moved:
        print("not as the fixed rule:", key, "->", traced.plan.describe())
print(f"{len(used)} planned shapes, {sum(t.moved for t in used.values())} not as the fixed rule")
settings = {"fixed-rule": False, "measured": True}
res = {name: [] for name in settings}
for r in range(rounds):
    for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
        conv_plan.TUNE = settings[name]
        for _ in range(2):
            run()
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            run()
            t.append(time.perf_counter() - t0)
        res[name].append(statistics.median(t))
for name, v in res.items():
    print(precision, mode, name, "median ms", round(statistics.median(v) * 1000, 1), [round(x * 1000, 1) for x in v])
