"""In-process interleaved A/B: bf16 NCHW group norm kernel (new) vs native ops, U-Net small bf16 training step.

Usage (from the repository root): .venv/bin/python benchmarks/results/unet_speed/session12-ab-bf16-group-norm.py [ROUNDS]
"""
import sys, time, statistics
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for unet_speed
from limner.allocator import tune_allocator
tune_allocator()
import torch
from limner.nn import norms, kernels
torch.set_num_threads(2)
import unet_speed as U
torch.manual_seed(0)
net, forward, prep = U.build_model("limner")
step = U._train_step(net, forward, prep, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
new_use = norms._use_kernel
def old_use(x, weight, bias, shift, groups, out_dtype):
    return (shift is None and out_dtype == torch.float32 and bias.shape == weight.shape
            and bias.dtype == torch.float32 and kernels.supports(x, weight, groups))
res = {"new": [], "old": []}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 6):
    for name, fn in (("new", new_use), ("old", old_use)) if r % 2 == 0 else (("old", old_use), ("new", new_use)):
        norms._use_kernel = fn
        for _ in range(2): step()
        t = []
        for _ in range(5):
            t0 = time.perf_counter(); step(); t.append(time.perf_counter() - t0)
        res[name].append(min(t))
for k, v in res.items():
    print(k, "median of best-of-5 ms", round(statistics.median(v) * 1000, 1), [round(x * 1000) for x in v])
print("ratio new/old", statistics.median(res["new"]) / statistics.median(res["old"]))
