"""Optional compiled CPU kernels, built on first use with the system's C compiler.

Eager PyTorch has no single-pass GroupNorm + SiLU: on the CPU the pair (or limner's
pure-PyTorch fused version in :mod:`limner.nn.norms`) costs several passes over memory and a
dozen small operators per call, which adds up to a large share of a small U-Net's step.
``group_norm_act.c`` does the forward in two passes (statistics, then the affine map and SiLU)
and the backward in two (the gradient through SiLU with its channel sums, then dL/dx).
``attention.c`` is multi-head attention over float32 rows read in place from a channels-last map
(or the qkv projection's output), forward and backward, for the short sequences of a U-Net's
low-resolution levels, where ``F.scaled_dot_product_attention`` on the CPU runs far below the
machine's matrix-product speed (see :mod:`limner.nn.attention`). ``winograd.c`` computes 3x3
convolutions over channels-last float32 maps with Winograd's F(2x2, 3x3) or F(4x4, 3x3) (16
instead of 36, or 36 instead of 144, multiplies per output tile and channel pair), forward and
input gradient (see :mod:`limner.nn.conv`). ``kernel_math.h`` holds what they share.

The sources ship with the package and compile into libraries in ``$LIMNER_KERNEL_DIR``, else
``$XDG_CACHE_HOME/limner/kernels``, else ``~/.cache/limner/kernels``, under names that hash the
sources, the compiler, this CPU's instruction-set flags and the build's variant; writes are
atomic, so concurrent processes (DDP ranks, test workers) are safe.

**One build per CPU, chosen by timing.** The kernels are written with GCC's vector extension for a
vector of VL floats and register tiles of GEMM_ROWS rows (``kernel_math.h``). What suits a CPU is a
measured fact, not a vendor's name: 16-float vectors are one AVX-512 register but, on a CPU with
AVX2 only (AMD Zen 2/3, most Intel laptop chips), the compiler emulates them through memory and the
3x3 convolution ran 40x slower than with 8-float vectors (a 2-core AMD EPYC of CPU family 25, Zen
3, AVX2 only: 32 ms against 0.76 ms for the tuning work below). So the first use on a machine
compiles every candidate in :data:`VARIANTS` (``cc -O3 -march=native -fopenmp -DLIMNER_VL=..
-DLIMNER_GEMM_ROWS=..``, in parallel, ~10 s), times each on the same convolution (round-robin, best
of nine, one thread) and records the fastest in ``tuning-<hash>.json`` beside the builds; later
processes read the record (a file lock keeps concurrent first users from timing twice).
``LIMNER_KERNEL_VARIANT=NAME`` picks a build by hand. Every build computes the same bits (each
output element by the same operations in the same order), so the choice never changes a result, and
exact resume and bitwise replay hold whichever build a machine timed fastest (a test compares them
all). The chosen build is loaded with ctypes and linked
against the OpenMP runtime PyTorch already loaded, so it follows ``torch.set_num_threads``.
Without a compiler, or with ``LIMNER_KERNELS=0``, nothing is compiled and every caller uses the
PyTorch path, which computes the same function (the tests compare the two).

Group norm: float32 channels-last and bfloat16 NCHW or channels-last CPU tensors forward and
backward (:func:`supports`); bfloat16 forward without coefficients, for inference
(:func:`supports_bf16_inference`). Attention: float32 CPU rows (:func:`supports_attention`).
3x3 convolutions: float32 channels-last CPU maps, or bfloat16 ones computed in float32 with a
bfloat16 or float32 result (:func:`supports_winograd`). Callers check first.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from limner.environment import cpu_model
from limner.fsutil import atomic_write

__all__ = ["attention_backward", "attention_forward", "available", "build_id", "group_norm_act_backward",
           "group_norm_act_forward", "group_norm_act_forward_bf16", "status", "supports", "supports_attention", "supports_bf16_inference",
           "supports_winograd", "winograd_conv3x3", "winograd_filter"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_SOURCES = (_HERE / "group_norm_act.c", _HERE / "attention.c", _HERE / "winograd.c")
_HEADERS = (_HERE / "kernel_math.h",)
_NAME = "limner_kernels"
# Candidate builds, name -> (floats per vector VL, rows of the matrix products' register tile);
# kernel_math.h says what they mean. All compute the same bits; _choose_variant picks by timing.
VARIANTS: dict[str, tuple[int, int]] = {"vl16-r8": (16, 8), "vl8-r6": (8, 6), "vl4-r8": (4, 8)}
# -fno-trapping-math: floating-point operations raise no signals the kernels rely on, so the
# compiler may evaluate both sides of a select. Without it GCC (12) left exp_poly's clamp as a
# branch on AVX2 targets, and every loop with an exponential (SiLU, softmax) ran one float at a
# time: the float32 group norm + SiLU forward took 2.3 ms instead of 0.4 on an AVX2 AMD EPYC. It
# changes no value (results are still IEEE operations in the same order).
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fopenmp",
          "-shared", "-fPIC", "-std=c11"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status = "not loaded yet"
_build_id: str | None = None  # the loaded library's file name (sources, compiler, CPU, torch, variant)
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


def _source_key(cc: str) -> bytes:
    """What a build depends on besides its variant: sources, compiler, flags, CPU, torch."""
    sources = [path.read_bytes() for path in (*_SOURCES, *_HEADERS)]
    return b"\0".join([*sources, _compiler_id(cc).encode(), " ".join(_FLAGS).encode(), _cpu_flags().encode(),
                        torch.__version__.encode()])


def _build(cc: str, variant: str, key: bytes | None = None) -> Path:
    """Compile the sources for ``variant`` into the kernel cache (once per source, compiler, CPU
    and variant)."""
    vl, rows = VARIANTS[variant]
    digest = hashlib.sha256((key or _source_key(cc)) + b"\0" + variant.encode()).hexdigest()[:16]
    target = _kernel_dir() / f"{_NAME}-{variant}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{_NAME}-", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *_FLAGS, f"-DLIMNER_VL={vl}", f"-DLIMNER_GEMM_ROWS={rows}", "-Wno-psabi",
                               *map(str, _SOURCES), "-o", tmp, "-lm"],
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
    for path in folder.glob(f".{_NAME}-*.so.tmp"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
        except OSError:
            pass  # another process swept it first


def _load() -> ctypes.CDLL | None:
    global _lib, _status, _build_id, _tried
    if _tried:  # every group-norm call asks: no lock once the answer is known
        return _lib
    with _lock:
        if not _tried:
            _lib, _status, _build_id = _open()
            _tried = True  # only after _lib is final, for the unlocked check above
        return _lib


def _open() -> tuple[ctypes.CDLL | None, str, str | None]:
    """Build (or find) and load the library: (library or None, status line, build id or None)."""
    if os.environ.get("LIMNER_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled (LIMNER_KERNELS=0)", None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        status = "no C compiler found (set CC); using the PyTorch ops"
        log.info("limner kernels: %s", status)
        return None, status, None
    try:
        key = _source_key(cc)
        variant, how = _choose_variant(cc, key)
        path = _build(cc, variant, key)
        lib = _declare(ctypes.CDLL(str(path)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        status = f"build failed, using the PyTorch ops: {exc}"
        log.warning("limner kernels: %s", status)
        return None, status, None
    return lib, f"compiled ({path}; {how})", path.stem


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set the argument and result types of every entry point of a loaded build."""
    i32, f32 = ctypes.c_int, ctypes.c_float
    lib.limner_gn_forward.restype = i32
    lib.limner_gn_forward.argtypes = [_ptr_t, _ptr_t, _ptr_t, i32, _i64, _i64, _i64, _i64, f32, i32,
                                      _ptr_t, _ptr_t, _ptr_t, _ptr_t, _ptr_t]
    lib.limner_gn_backward.restype = i32
    lib.limner_gn_backward.argtypes = [_ptr_t, _ptr_t, _ptr_t, i32, _ptr_t, _ptr_t, _ptr_t, _ptr_t,
                                       _i64, _i64, _i64, _i64, i32, _ptr_t, _ptr_t, _ptr_t]
    lib.limner_gn_forward_bf16_nchw.restype = None
    lib.limner_gn_forward_bf16_nchw.argtypes = [_ptr_t, _ptr_t, _ptr_t, i32, _i64, _i64, _i64, _i64, f32,
                                                i32] + [_ptr_t] * 5
    lib.limner_gn_backward_bf16_nchw.restype = i32
    lib.limner_gn_backward_bf16_nchw.argtypes = lib.limner_gn_backward.argtypes
    lib.limner_gn_forward_bf16_cl.restype = i32
    lib.limner_gn_forward_bf16_cl.argtypes = lib.limner_gn_forward.argtypes
    lib.limner_gn_backward_bf16_cl.restype = i32
    lib.limner_gn_backward_bf16_cl.argtypes = lib.limner_gn_backward.argtypes
    lib.limner_attention_forward.restype = i32
    lib.limner_attention_forward.argtypes = [_ptr_t] * 5 + [_i64] * 13 + [_ptr_t, f32]
    lib.limner_attention_backward.restype = i32
    lib.limner_attention_backward.argtypes = [_ptr_t] * 9 + [_i64] * 21 + [_ptr_t, f32]
    lib.limner_wino_filter.restype = None
    lib.limner_wino_filter.argtypes = [_ptr_t, _ptr_t, _i64, _i64, i32]
    lib.limner_wino_forward_mixed.restype = i32
    lib.limner_wino_forward_mixed.argtypes = [i32, _ptr_t, i32, _ptr_t, _ptr_t, _ptr_t, i32] + [_i64] * 5
    lib.limner_wino4_filter.restype = None
    lib.limner_wino4_filter.argtypes = lib.limner_wino_filter.argtypes
    lib.limner_wino_tiles.restype = None
    lib.limner_wino_tiles.argtypes = [i32] + [_ptr_t] * 4 + [_i64] * 5
    lib.limner_wino_filter_grad.restype = None
    lib.limner_wino_filter_grad.argtypes = [i32, _ptr_t, _ptr_t, _i64]
    return lib


# ---------------------------------------------------------------------------------------------
# Choosing the build for this CPU
# ---------------------------------------------------------------------------------------------


def _choose_variant(cc: str, key: bytes) -> tuple[str, str]:
    """(variant, how it was chosen): ``$LIMNER_KERNEL_VARIANT``, else this CPU's tuning record,
    else timing every candidate now (once per CPU, compiler, sources and torch; concurrent
    processes wait for the one that times)."""
    forced = os.environ.get("LIMNER_KERNEL_VARIANT", "").strip()
    if forced:
        if forced not in VARIANTS:
            raise RuntimeError(f"LIMNER_KERNEL_VARIANT={forced!r} is not one of {', '.join(VARIANTS)}")
        return forced, f"variant {forced} from LIMNER_KERNEL_VARIANT"
    record = _kernel_dir() / f"tuning-{hashlib.sha256(key).hexdigest()[:16]}.json"
    chosen = _read_tuning(record)
    if chosen is None:
        record.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(record.with_suffix(".lock")):
            chosen = _read_tuning(record)
            if chosen is None:
                chosen = _tune(cc, key)
                atomic_write(record, lambda f: f.write(json.dumps(chosen, indent=1).encode()), fsync=False)
                log.info("limner kernels: timed the builds on this CPU: %s", _describe(chosen))
    return chosen["variant"], _describe(chosen)


def _describe(record: dict[str, Any]) -> str:
    times = ", ".join(f"{name} {ms:.2f} ms" for name, ms in record["ms"].items())
    return f"variant {record['variant']}, the fastest on this CPU ({times})"


def _read_tuning(path: Path) -> dict[str, Any] | None:
    """A tuning record that names a known variant, or None (missing, unreadable, stale)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("variant") not in VARIANTS or not isinstance(record.get("ms"), dict):
        return None
    return record


def _tune(cc: str, key: bytes) -> dict[str, Any]:
    """Build every candidate (in parallel), time each on the same work and pick the fastest.

    The work is what dominates a small U-Net's step: a 3x3 convolution by F(4x4, 3x3) over a
    16x16 map of 64 channels (batch 8), whose cost is the register-tiled matrix products and the
    vectorised transforms. Best of five after a warm-up, at the current ``torch`` thread count.
    Every variant computes the same bits (see kernel_math.h), so the choice changes speed only."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(VARIANTS)) as pool:
        futures = {name: pool.submit(_build, cc, name, key) for name in VARIANTS}
    built, errors = {}, []
    for name, future in futures.items():
        try:
            built[name] = future.result()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            errors.append(f"{name}: {exc}")
    if not built:
        raise RuntimeError("no kernel variant could be built: " + "; ".join(errors))
    ms = {name: seconds * 1e3 for name, seconds in _time_builds(built).items()}
    return {"variant": min(ms, key=ms.get), "ms": ms, "cpu": cpu_model(), "torch": torch.__version__,
            "timed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _time_builds(paths: dict[str, Path], rounds: int = 9) -> dict[str, float]:
    """Best wall time (seconds) of the tuning work on each build, on one thread, the builds
    taking turns round by round so that other load on the machine slows them alike."""
    gen = torch.Generator().manual_seed(0)
    N, H, W, C = 8, 16, 16, 64
    x = torch.randn(N, H, W, C, generator=gen)
    w = torch.randn(C, 3, 3, C, generator=gen)  # [Cin][3][3][Cout]
    U, y = torch.empty(36, C, C), torch.empty(N, H, W, C)
    libs = {name: _declare(ctypes.CDLL(str(path))) for name, path in paths.items()}
    best = dict.fromkeys(libs, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels share PyTorch's OpenMP runtime and its thread count
    try:
        for lib in libs.values():
            lib.limner_wino4_filter(w.data_ptr(), U.data_ptr(), C, C, 0)
        for r in range(rounds + 1):
            for name, lib in libs.items():
                t0 = time.perf_counter()
                if lib.limner_wino_forward_mixed(4, x.data_ptr(), 0, U.data_ptr(), None, y.data_ptr(), 0,
                                                 N, H, W, C, C) != 0:
                    raise RuntimeError(f"{paths[name].name}: out of memory while timing")
                if r:  # round 0 warms up
                    best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return best


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent tuners may both time; the last record wins
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def available() -> bool:
    """Whether the compiled kernels are usable (compiles them on the first call)."""
    return _load() is not None


def build_id() -> str | None:
    """The loaded build's name (it hashes the sources, compiler, CPU flags, torch and variant), or
    None without the compiled kernels; what was measured with one build holds for it."""
    _load()
    return _build_id


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
    """Whether :func:`group_norm_act_forward` and :func:`group_norm_act_backward` handle this
    call: x [B, C, H, W] on the CPU, float32 channels-last in memory or bfloat16 NCHW or
    channels-last (bfloat16 autocast training), float32 weight [C] or [B, C], C divisible by
    ``groups``; and the kernels are built."""
    if _fits(x, weight, groups, torch.float32):
        return _channels_last(x) and available()
    return (_fits(x, weight, groups, torch.bfloat16) and x.numel() > 0
            and (x.is_contiguous() or _channels_last(x)) and available())


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


def _loaded(caller: str) -> ctypes.CDLL:
    lib = _load()
    assert lib is not None, f"{caller} called without the compiled kernels"
    return lib


def group_norm_act_forward_bf16(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float,
                                act: bool) -> Tensor:
    """SiLU(GroupNorm(x)) (or GroupNorm(x)) for bfloat16 x, computed in float and rounded once,
    in x's memory format (NCHW: one pass per group; channels-last: the float32 kernel's two
    passes); no gradient. Requires :func:`supports_bf16_inference`."""
    lib = _loaded("group_norm_act_forward_bf16")
    B, C, H, W = x.shape
    weight, bias = weight.detach().float().contiguous(), bias.detach().float().contiguous()
    per_sample = int(weight.dim() == 2)
    if x.is_contiguous():
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        lib.limner_gn_forward_bf16_nchw(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), per_sample,
                                        B, H * W, C, groups, eps, int(act), y.data_ptr(), None, None, None, None)
        return y
    y = torch.empty_like(x, memory_format=torch.channels_last)
    scratch = _coefficients(x, groups)  # a, b, mean, rstd: not needed without a backward pass
    rc = lib.limner_gn_forward_bf16_cl(
        x.data_ptr(), weight.data_ptr(), bias.data_ptr(), per_sample, B, H * W, C, groups, eps, int(act),
        y.data_ptr(), *(t.data_ptr() for t in scratch))
    if rc != 0:
        raise MemoryError("group_norm_act kernel: out of memory")
    return y


def _group_norm_kernels(lib: ctypes.CDLL, x: Tensor) -> tuple[torch.memory_format, Any, Any]:
    """(layout, forward, backward) of the group-norm kernels for x (:func:`supports`): bfloat16
    NCHW maps take the one-pass-per-group pair, float32 and bfloat16 channels-last maps the
    two-pass pair of their dtype. Both passes of one call choose here, so they always agree."""
    if x.dtype != torch.bfloat16:
        return torch.channels_last, lib.limner_gn_forward, lib.limner_gn_backward
    if x.is_contiguous():
        return torch.contiguous_format, lib.limner_gn_forward_bf16_nchw, lib.limner_gn_backward_bf16_nchw
    return torch.channels_last, lib.limner_gn_forward_bf16_cl, lib.limner_gn_backward_bf16_cl


def group_norm_act_forward(
    x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, act: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, a [B, C], b [B, C], mean [B, G], rstd [B, G]) with y = SiLU(x * a + b) (or x * a + b)
    = SiLU(GroupNorm(x)) in x's dtype and layout (float32 channels-last, bfloat16 NCHW or
    channels-last; a bfloat16 y is rounded once). Requires :func:`supports`."""
    lib = _loaded("group_norm_act_forward")
    B, C, H, W = x.shape
    weight, bias = weight.detach().contiguous(), bias.detach().contiguous()
    a, b, mean, rstd = _coefficients(x, groups)
    layout, forward, _ = _group_norm_kernels(lib, x)
    y = torch.empty_like(x, memory_format=layout)
    rc = forward(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), int(weight.dim() == 2), B, H * W, C, groups,
                 eps, int(act), y.data_ptr(), a.data_ptr(), b.data_ptr(), mean.data_ptr(), rstd.data_ptr())
    if rc:  # -1: out of memory (the NCHW bfloat16 forward allocates nothing and returns None)
        raise MemoryError("group_norm_act kernel: out of memory")
    return y, a, b, mean, rstd


def group_norm_act_backward(
    x: Tensor, grad: Tensor, weight: Tensor, a: Tensor, b: Tensor, mean: Tensor, rstd: Tensor,
    groups: int, act: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dx in x's dtype and layout, dL/dweight [B, C], dL/dbias [B, C]) per sample, the last two
    float32; sum over B for [C] parameters."""
    lib = _loaded("group_norm_act_backward")
    B, C, H, W = x.shape
    layout, _, backward = _group_norm_kernels(lib, x)
    grad = grad.to(x.dtype).contiguous(memory_format=layout)
    if grad.data_ptr() == x.data_ptr():  # never in autograd; the kernel may not alias them
        grad = grad.clone(memory_format=layout)
    weight = weight.detach().contiguous()
    gx = torch.empty_like(x, memory_format=layout)
    gw, gb = torch.empty(2, B, C, dtype=torch.float32).unbind(0)
    rc = backward(x.data_ptr(), grad.data_ptr(), weight.data_ptr(), int(weight.dim() == 2), a.data_ptr(),
                b.data_ptr(), mean.data_ptr(), rstd.data_ptr(), B, H * W, C, groups, int(act),
                gx.data_ptr(), gw.data_ptr(), gb.data_ptr())
    if rc != 0:
        raise MemoryError("group_norm_act kernel: out of memory")
    return gx, gw, gb


def _rows(t: Tensor) -> bool:
    """A float32 CPU [B, T, C] tensor whose last dimension is dense (any batch/token strides)."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 3 and t.stride(2) == 1


def supports_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> bool:
    """Whether :func:`attention_forward` handles q [B, Tq, C], k, v [B, Tk, C] (float32 CPU,
    last dimension dense, e.g. slices of a channels-last qkv map) with ``heads`` heads whose
    width is a multiple of 16; and the kernels are built."""
    if not (_rows(q) and _rows(k) and _rows(v)):
        return False
    B, Tq, C = q.shape
    return (k.shape == v.shape and k.shape[0] == B and k.shape[2] == C and C % heads == 0
            and (C // heads) % 16 == 0 and Tq > 0 and k.shape[1] > 0 and available())


def _key_mask(mask: Tensor | None, B: int, Tk: int) -> Tensor | None:
    """A bool key mask broadcastable to [B, 1, 1, Tk] (True = attend) as dense uint8 [B, Tk]."""
    if mask is None:
        return None
    return mask.reshape(mask.shape[0], mask.shape[-1]).expand(B, Tk).to(torch.uint8).contiguous()


def attention_forward(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None,
                      need_lse: bool = True) -> tuple[Tensor, Tensor | None]:
    """(o [B, Tq, C] contiguous, lse [B, heads, Tq] or None): softmax(q k^T / sqrt(d) + mask) v per
    head, d = C / heads; ``mask`` is bool, broadcastable to [B, 1, 1, Tk] (True = attend; every
    row needs one). Requires :func:`supports_attention`."""
    lib = _loaded("attention_forward")
    B, Tq, C = q.shape
    Tk, D = k.shape[1], C // heads
    o = q.new_empty(B, Tq, C)
    lse = q.new_empty(B, heads, Tq) if need_lse else None
    key_mask = _key_mask(mask, B, Tk)
    rc = lib.limner_attention_forward(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), None if lse is None else lse.data_ptr(),
        B, heads, Tq, Tk, D, *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *o.stride()[:2],
        None if key_mask is None else key_mask.data_ptr(), D ** -0.5)
    if rc != 0:
        raise MemoryError("attention kernel: out of memory")
    return o, lse


def attention_backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, grad: Tensor, dq: Tensor,
                       dk: Tensor, dv: Tensor, heads: int, mask: Tensor | None = None) -> None:
    """Write dL/dq, dL/dk, dL/dv into ``dq``, ``dk``, ``dv`` (rows like q, k, v; may be slices of one
    buffer) given ``grad`` = dL/do and the forward's o and lse."""
    lib = _loaded("attention_backward")
    B, Tq, C = q.shape
    Tk, D = k.shape[1], C // heads
    grad = grad.to(torch.float32)
    if grad.stride(2) != 1:
        grad = grad.contiguous()
    for t in (dq, dk, dv):
        assert _rows(t), "gradient buffers must be float32 rows with a dense last dimension"
    key_mask = _key_mask(mask, B, Tk)
    rc = lib.limner_attention_backward(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), grad.data_ptr(), lse.data_ptr(),
        dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), B, heads, Tq, Tk, D, *q.stride()[:2], *k.stride()[:2],
        *v.stride()[:2], *o.stride()[:2], *grad.stride()[:2], *dq.stride()[:2], *dk.stride()[:2],
        *dv.stride()[:2], None if key_mask is None else key_mask.data_ptr(), D ** -0.5)
    if rc != 0:
        raise MemoryError("attention kernel: out of memory")


def supports_winograd(x: Tensor, weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...] | str,
                      dilation: tuple[int, ...], groups: int) -> bool:
    """Whether :func:`winograd_conv3x3` computes ``F.conv2d(x, weight, ...)`` with these
    arguments: x [N, C, H, W] a float32 or bfloat16 CPU map, channels-last, with H and W even;
    weight [Cout, C, 3, 3] float32; stride 1, padding 1, no dilation or groups, C and Cout
    multiples of 16; kernels built. (A bfloat16 map with a float32 weight is what bfloat16 autocast
    hands a convolution; the caller decides when that applies.)"""
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or weight.dtype != torch.float32
            or x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3) or tuple(stride) != (1, 1)
            or isinstance(padding, str) or tuple(padding) != (1, 1) or tuple(dilation) != (1, 1) or groups != 1):
        return False
    N, C, H, W = x.shape
    return (weight.shape[1] == C and C % 16 == 0 and weight.shape[0] % 16 == 0 and N > 0 and H % 2 == 0
            and W % 2 == 0 and H > 0 and W > 0 and x.is_contiguous(memory_format=torch.channels_last)
            and available())


def winograd_filter(weight: Tensor, rotate: bool = False, tile: int = 2) -> Tensor:
    """U [P, Cin, Cout] = G w G^T for every filter of weight [Cout, Cin, 3, 3], for output tiles of
    ``tile`` x ``tile`` (2: F(2x2, 3x3), P = 16; 4: F(4x4, 3x3), P = 36); with ``rotate``,
    U [P, Cout, Cin] of the input gradient's filters (each turned by 180 degrees)."""
    lib = _loaded("winograd_filter")
    if tile not in (2, 4):
        raise ValueError(f"tile must be 2 or 4, got {tile}")
    # [A, 3, 3, B] with the vectorised channel last: [Cin, 3, 3, Cout], or [Cout, 3, 3, Cin]
    wt = weight.detach().float().permute(0, 2, 3, 1) if rotate else weight.detach().float().permute(1, 2, 3, 0)
    wt = wt.contiguous()
    U = wt.new_empty((tile + 2) ** 2, wt.shape[0], wt.shape[3])
    make = lib.limner_wino_filter if tile == 2 else lib.limner_wino4_filter
    make(wt.data_ptr(), U.data_ptr(), wt.shape[0], wt.shape[3], int(rotate))
    return U


_WINOGRAD_DTYPES = (torch.float32, torch.bfloat16)


def winograd_conv3x3(x: Tensor, U: Tensor, bias: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """conv2d(x, w, bias, padding=1) for U = :func:`winograd_filter` (w, tile=2 or 4), in
    channels-last memory. Requires :func:`supports_winograd`, and H and W multiples of 4 for
    tiles of 4. x may be float32 or bfloat16 and the result (``out_dtype``, default x's dtype)
    either: the arithmetic is float32 throughout, a bfloat16 input is widened exactly and a
    bfloat16 result rounded once (to nearest, ties to even), so a bfloat16 result is the float32
    convolution of the input, rounded."""
    lib = _loaded("winograd_conv3x3")
    N, C, H, W = x.shape
    Cout = U.shape[2]
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if x.dtype not in _WINOGRAD_DTYPES or out_dtype not in _WINOGRAD_DTYPES:
        raise TypeError(f"winograd_conv3x3 computes float32 and bfloat16 maps, got {x.dtype} -> {out_dtype}")
    if bias is not None:
        bias = bias.detach().float().contiguous()
    y = torch.empty((N, Cout, H, W), dtype=out_dtype, memory_format=torch.channels_last)
    if U.shape[0] == 36 and (H % 4 or W % 4):
        raise ValueError(f"F(4x4, 3x3) needs H and W divisible by 4, got {H}x{W}")
    rc = lib.limner_wino_forward_mixed(2 if U.shape[0] == 16 else 4, x.data_ptr(), int(x.dtype == torch.bfloat16),
                                       U.contiguous().data_ptr(), None if bias is None else bias.data_ptr(),
                                       y.data_ptr(), int(out_dtype == torch.bfloat16), N, H, W, C, Cout)
    if rc != 0:
        raise MemoryError("winograd kernel: out of memory")
    return y


WGRAD_SCRATCH_BYTES = 64 * 2**20  # the most winograd_weight_grad's tile transforms take at once


def winograd_weight_grad(x: Tensor, grad: Tensor, tile: int = 4) -> Tensor:
    """The gradient of conv2d(x, w, padding=1) with respect to w [Cout, Cin, 3, 3] for the
    output gradient ``grad``, in Winograd's domain: dU_p = V_p^T dM_p summed over all tiles
    (:func:`limner_wino_tiles` writes V and dM = A grad A^T), then dw = G^T dU G. x and grad are
    channels-last float32 with :func:`supports_winograd`'s shapes (H and W multiples of ``tile``).
    Relative error ~1e-5 of the gradient's scale (oneDNN's direct sum: ~1e-6)."""
    lib = _loaded("winograd_weight_grad")
    if tile not in (2, 4):
        raise ValueError(f"tile must be 2 or 4, got {tile}")
    N, C, H, W = x.shape
    Cout = grad.shape[1]
    if H % tile or W % tile:
        raise ValueError(f"F({tile}x{tile}, 3x3) needs H and W divisible by {tile}, got {H}x{W}")
    x = x.detach().contiguous(memory_format=torch.channels_last)
    grad = grad.detach().contiguous(memory_format=torch.channels_last)
    P, tiles = (tile + 2) ** 2, (H // tile) * (W // tile)
    # the transforms take ~(P / tile^2) times the maps: samples go in chunks whose transforms fit
    # WGRAD_SCRATCH_BYTES, each chunk's products added to dU (a fixed order: same bits every time)
    per_sample = 4 * P * tiles * (C + Cout)
    chunk = max(1, min(N, WGRAD_SCRATCH_BYTES // per_sample))
    dU = None
    for n0 in range(0, N, chunk):
        n = min(chunk, N - n0)
        V = x.new_empty(P, n * tiles, C)
        dM = x.new_empty(P, n * tiles, Cout)
        lib.limner_wino_tiles(tile, x[n0:n0 + n].data_ptr(), grad[n0:n0 + n].data_ptr(), V.data_ptr(),
                              dM.data_ptr(), n, H, W, C, Cout)
        if dU is None:
            dU = torch.bmm(V.transpose(1, 2), dM)  # [P, Cin, Cout], the tiles summed
        else:
            dU.baddbmm_(V.transpose(1, 2), dM)
    dw = x.new_empty(3, 3, C, Cout)
    lib.limner_wino_filter_grad(tile, dU.data_ptr(), dw.data_ptr(), C * Cout)
    return dw.permute(3, 2, 0, 1).contiguous()
