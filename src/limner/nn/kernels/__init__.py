"""Optional compiled CPU kernels, built on first use with the system's C compiler.

Eager PyTorch has no single-pass GroupNorm + SiLU: on the CPU the pair (or limner's
pure-PyTorch fused version in :mod:`limner.nn.norms`) costs several passes over memory and a
dozen small operators per call, which adds up to a large share of a small U-Net's step.
``group_norm_act.c`` does the forward in two passes (statistics, then the affine map and SiLU)
and the backward in two (the gradient through SiLU with its channel sums, then dL/dx).

The source ships with the package. The first call compiles it (``cc -O3 -march=native
-fopenmp``, about a second) into ``$LIMNER_KERNEL_DIR``, else
``$XDG_CACHE_HOME/limner/kernels``, else ``~/.cache/limner/kernels``, under a name that hashes
the source, the compiler and this CPU's instruction-set flags; the write is atomic, so
concurrent processes (DDP ranks, test workers) are safe. It is loaded with ctypes and linked
against the OpenMP runtime PyTorch already loaded, so it follows ``torch.set_num_threads``.
Without a compiler, or with ``LIMNER_KERNELS=0``, nothing is compiled and every caller uses the
pure-PyTorch path, which computes the same function (the tests compare the two).

Float32 channels-last CPU tensors are handled forward and backward (:func:`supports`);
bfloat16 CPU tensors (NCHW or channels-last) forward only, for inference
(:func:`supports_bf16_inference`).
Callers check first.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "group_norm_act_backward", "group_norm_act_forward", "group_norm_act_forward_bf16", "status",
           "supports", "supports_bf16_inference"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("group_norm_act.c")
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status = "not loaded yet"
_tried = False

_ptr_t = ctypes.c_void_p  # tensors are passed as their data_ptr() ints (cheaper than casts)
_i64 = ctypes.c_int64


def _kernel_dir() -> Path:
    if os.environ.get("LIMNER_KERNEL_DIR"):
        return Path(os.environ["LIMNER_KERNEL_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "limner" / "kernels"


def _cpu_flags() -> str:
    """The instruction-set flags of this CPU (-march=native code must not run on another)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _compiler_id(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cc: str) -> Path:
    """Compile the source into the kernel cache (once per source, compiler and CPU)."""
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([
        source, _compiler_id(cc).encode(), " ".join(_FLAGS).encode(), _cpu_flags().encode(),
        torch.__version__.encode(),
    ])).hexdigest()[:16]
    target = _kernel_dir() / f"group_norm_act-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=".group_norm_act-", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _sweep_stale_temps(folder: Path, max_age_s: float = 3600.0) -> None:
    """Remove partial outputs of builds killed more than an hour ago (a live build takes ~1 s)."""
    now = time.time()
    for path in folder.glob(".group_norm_act-*.so.tmp"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
        except OSError:
            pass  # another process swept it first


def _load() -> ctypes.CDLL | None:
    global _lib, _status, _tried
    if _tried:  # every group-norm call asks: no lock once the answer is known
        return _lib
    with _lock:
        if not _tried:
            _lib, _status = _open()
            _tried = True  # only after _lib is final, for the unlocked check above
        return _lib


def _open() -> tuple[ctypes.CDLL | None, str]:
    """Build (or find) and load the library: (library or None, status line)."""
    if os.environ.get("LIMNER_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled (LIMNER_KERNELS=0)"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        status = "no C compiler found (set CC); using the PyTorch ops"
        log.info("limner kernels: %s", status)
        return None, status
    try:
        path = _build(cc)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        status = f"build failed, using the PyTorch ops: {exc}"
        log.warning("limner kernels: %s", status)
        return None, status
    i32, f32 = ctypes.c_int, ctypes.c_float
    lib.limner_gn_forward.restype = i32
    lib.limner_gn_forward.argtypes = [_ptr_t, _ptr_t, _ptr_t, i32, _i64, _i64, _i64, _i64, f32, i32,
                                      _ptr_t, _ptr_t, _ptr_t, _ptr_t, _ptr_t]
    lib.limner_gn_backward.restype = i32
    lib.limner_gn_backward.argtypes = [_ptr_t, _ptr_t, _ptr_t, i32, _ptr_t, _ptr_t, _ptr_t, _ptr_t,
                                       _i64, _i64, _i64, _i64, i32, _ptr_t, _ptr_t, _ptr_t]
    lib.limner_gn_forward_bf16_nchw.restype = None
    lib.limner_gn_forward_bf16_nchw.argtypes = [_ptr_t, _ptr_t, _ptr_t, i32, _i64, _i64, _i64, _i64, f32,
                                                i32, _ptr_t]
    lib.limner_gn_forward_bf16_cl.restype = i32
    lib.limner_gn_forward_bf16_cl.argtypes = lib.limner_gn_forward.argtypes
    return lib, f"compiled ({path})"


def available() -> bool:
    """Whether the compiled kernels are usable (compiles them on the first call)."""
    return _load() is not None


def status() -> str:
    """One line for logs and benchmarks: compiled (where), disabled, or why not."""
    _load()
    return _status


def _fits(x: Tensor, weight: Tensor, groups: int, dtype: torch.dtype) -> bool:
    """x [B, C, H, W] of ``dtype`` on the CPU, float32 weight [C] or [B, C], groups dividing C."""
    if x.device.type != "cpu" or x.dtype != dtype or x.dim() != 4 or weight.dtype != torch.float32:
        return False
    B, C = x.shape[:2]
    return C % groups == 0 and weight.shape in ((C,), (B, C))


def _channels_last(x: Tensor) -> bool:
    return x.permute(0, 2, 3, 1).is_contiguous()


def supports(x: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether the kernels handle this call: float32 CPU tensors, x [B, C, H, W] channels-last
    in memory, weight [C] or [B, C], C divisible by ``groups``; and the kernels are built."""
    return _fits(x, weight, groups, torch.float32) and _channels_last(x) and available()


def supports_bf16_inference(x: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether :func:`group_norm_act_forward_bf16` handles this call: bfloat16 CPU x [B, C, H, W]
    dense in NCHW or channels-last memory, float32 weight [C] or [B, C], C divisible by
    ``groups``; forward only."""
    return (_fits(x, weight, groups, torch.bfloat16) and x.numel() > 0
            and (x.is_contiguous() or _channels_last(x)) and available())


def _coefficients(x: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """float32 a, b [B, C] and mean, rstd [B, G] for the forward kernels, in one allocation."""
    B, C = x.shape[:2]
    coeffs = torch.empty(2 * B * C + 2 * B * groups, dtype=torch.float32, device=x.device)
    a, b = coeffs[:B * C].view(B, C), coeffs[B * C:2 * B * C].view(B, C)
    mean, rstd = coeffs[2 * B * C:].view(2, B, groups).unbind(0)
    return a, b, mean, rstd


def group_norm_act_forward_bf16(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float,
                                act: bool) -> Tensor:
    """SiLU(GroupNorm(x)) (or GroupNorm(x)) for bfloat16 x, computed in float and rounded once,
    in x's memory format (NCHW: one pass per group; channels-last: the float32 kernel's two
    passes); no gradient. Requires :func:`supports_bf16_inference`."""
    lib = _load()
    assert lib is not None, "group_norm_act_forward_bf16 called without the compiled kernels"
    B, C, H, W = x.shape
    weight, bias = weight.detach().float().contiguous(), bias.detach().float().contiguous()
    per_sample = int(weight.dim() == 2)
    if x.is_contiguous():
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        lib.limner_gn_forward_bf16_nchw(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), per_sample,
                                        B, H * W, C, groups, eps, int(act), y.data_ptr())
        return y
    y = torch.empty_like(x, memory_format=torch.channels_last)
    scratch = _coefficients(x, groups)  # a, b, mean, rstd: not needed without a backward pass
    rc = lib.limner_gn_forward_bf16_cl(
        x.data_ptr(), weight.data_ptr(), bias.data_ptr(), per_sample, B, H * W, C, groups, eps, int(act),
        y.data_ptr(), *(t.data_ptr() for t in scratch))
    if rc != 0:
        raise MemoryError("group_norm_act kernel: out of memory")
    return y


def group_norm_act_forward(
    x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, act: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, a [B, C], b [B, C], mean [B, G], rstd [B, G]) with y = SiLU(x * a + b) (or x * a + b)
    = SiLU(GroupNorm(x)) in x's channels-last layout. Requires :func:`supports`."""
    lib = _load()
    assert lib is not None, "group_norm_act_forward called without the compiled kernels"
    B, C, H, W = x.shape
    weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
    y = torch.empty_like(x, memory_format=torch.channels_last)
    a, b, mean, rstd = _coefficients(x, groups)
    rc = lib.limner_gn_forward(
        x.data_ptr(), weight.data_ptr(), bias.data_ptr(), int(weight.dim() == 2), B, H * W, C, groups,
        eps, int(act), y.data_ptr(), a.data_ptr(), b.data_ptr(), mean.data_ptr(), rstd.data_ptr())
    if rc != 0:
        raise MemoryError("group_norm_act kernel: out of memory")
    return y, a, b, mean, rstd


def group_norm_act_backward(
    x: Tensor, grad: Tensor, weight: Tensor, a: Tensor, b: Tensor, mean: Tensor, rstd: Tensor,
    groups: int, act: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dx, dL/dweight [B, C], dL/dbias [B, C]) per sample; sum over B for [C] parameters."""
    lib = _load()
    assert lib is not None, "group_norm_act_backward called without the compiled kernels"
    B, C, H, W = x.shape
    grad = grad.to(torch.float32).contiguous(memory_format=torch.channels_last)
    if grad.data_ptr() == x.data_ptr():  # never in autograd; the kernel may not alias them
        grad = grad.clone(memory_format=torch.channels_last)
    weight = weight.detach().contiguous()
    gx = torch.empty_like(x, memory_format=torch.channels_last)
    gw, gb = x.new_empty(2, B, C).unbind(0)
    rc = lib.limner_gn_backward(
        x.data_ptr(), grad.data_ptr(), weight.data_ptr(), int(weight.dim() == 2), a.data_ptr(),
        b.data_ptr(), mean.data_ptr(), rstd.data_ptr(), B, H * W, C, groups, int(act),
        gx.data_ptr(), gw.data_ptr(), gb.data_ptr())
    if rc != 0:
        raise MemoryError("group_norm_act kernel: out of memory")
    return gx, gw, gb
