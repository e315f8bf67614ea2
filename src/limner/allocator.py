"""Keep freed activation memory in the process instead of returning it to the kernel (glibc).

PyTorch on the CPU allocates every activation with ``malloc``. glibc serves large blocks with
``mmap`` and gives them back with ``munmap`` when freed, and trims the top of its heap once more
than a threshold is free there; the next network evaluation then asks the kernel for the same
memory again and takes a page fault for every 4 KiB it touches. A sampler calls the same network
tens of times with the same shapes, so for limner's ``small`` U-Net at batch 16 on this 2-core
machine that churn is ~15% of a network evaluation (51 → 43 ms). PyTorch's CPU tuning guide
recommends an allocator that keeps memory (jemalloc or tcmalloc through ``LD_PRELOAD``, as
``torch.backends.xeon.run_cpu`` does); without installing one, two ``mallopt`` settings get the
same effect from glibc: serve blocks up to 32 MiB from the heap, and keep up to 256 MiB free at
its top. The cost is that a process keeps some freed memory (here ~40 MB more peak RSS).

This changes the whole process, so the library never does it on import: the ``limner`` command
calls :func:`tune_allocator` at start-up (every command), and a program that embeds limner may
call it itself. ``LIMNER_MALLOC=0`` turns it off; it also stays off where another allocator is
preloaded, where ``GLIBC_TUNABLES`` already sets malloc options, and off glibc (macOS, Windows,
musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "allocator_status", "tune_allocator"]

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 256 * 2**20

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_lock = threading.Lock()
_status: str | None = None


def _reason_to_skip() -> str | None:
    if os.environ.get("LIMNER_MALLOC", "1").strip().lower() in ("0", "off", "false", "no"):
        return "off (LIMNER_MALLOC=0)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"unchanged (not glibc: {platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    preload = os.environ.get("LD_PRELOAD", "")
    for name in _OTHER_ALLOCATORS:
        if name in preload:
            return f"unchanged ({name} preloaded)"
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "unchanged (GLIBC_TUNABLES sets malloc options)"
    return None


def _apply() -> str:
    reason = _reason_to_skip()
    if reason:
        return reason
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError) as error:
        return f"unchanged (mallopt unavailable: {error})"
    if not ok:
        return "unchanged (mallopt refused the settings)"
    return f"glibc keeps freed memory (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB)"


def tune_allocator() -> str:
    """Apply the settings in the module docstring once per process; returns what was done."""
    global _status
    with _lock:
        if _status is None:
            _status = _apply()
        return _status


def allocator_status() -> str:
    """What :func:`tune_allocator` did in this process, without applying anything."""
    return _status or "default (limner did not change it in this process)"
