import sys, time, statistics
sys.path.insert(0, "/work/main/benchmarks")
from limner.allocator import tune_allocator
tune_allocator()
import torch
torch.set_num_threads(2)
import unet_speed as U
from limner.models.diffusion import unet as unet_mod
torch.manual_seed(0)
net, forward, prep = U.build_model("limner")
step = U._train_step(net, forward, prep, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
orig = unet_mod.UNet._low_precision_cpu_nchw
res = {"nchw": [], "cl": []}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    for name in (("nchw", "cl") if r % 2 == 0 else ("cl", "nchw")):
        unet_mod.UNet._low_precision_cpu_nchw = orig if name == "nchw" else (lambda self, x: False)
        for _ in range(2): step()
        t = []
        for _ in range(5):
            t0 = time.perf_counter(); step(); t.append(time.perf_counter() - t0)
        res[name].append(statistics.median(t))
for k, v in res.items():
    print(k, "median ms", round(statistics.median(v) * 1000, 1), [round(x * 1000) for x in v])
if len(sys.argv) > 2:
    from torch.profiler import profile
    for name in ("cl",):
        unet_mod.UNet._low_precision_cpu_nchw = orig if name == "nchw" else (lambda self, x: False)
        step(); step()
        with profile() as p:
            for _ in range(3): step()
        print("=====", name)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
