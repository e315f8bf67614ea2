"""limner.allocator: glibc keeps freed memory once the CLI asks, and stays untouched when told."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from limner import allocator

on_glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                              reason="the allocator settings are glibc's")

# Touch and free a 24 MiB block, then report how much of it the process still holds (RSS, MiB).
_PROBE = textwrap.dedent("""
    import ctypes, os, sys
    from limner.allocator import tune_allocator
    status = tune_allocator() if sys.argv[1] == "tuned" else "default"
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page / 2**20
    before = rss()
    block = libc.malloc(24 * 2**20)
    ctypes.memset(block, 1, 24 * 2**20)
    libc.free(block)
    print(status)
    print(rss() - before)
""")


def _probe(mode: str, **env: str) -> tuple[str, float]:
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("LIMNER_MALLOC", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         env={**environ, **env}, timeout=60, check=True).stdout.split("\n")
    return out[0], float(out[1])


@on_glibc
def test_tuned_process_keeps_a_freed_block_and_default_returns_it():
    status, kept = _probe("tuned")
    assert status.startswith("glibc keeps freed memory"), status
    assert kept > 20, f"a freed 24 MiB block should stay resident, {kept:.1f} MiB did"
    status, kept = _probe("default")
    assert kept < 4, f"glibc's default should return the block, {kept:.1f} MiB stayed"


@on_glibc
def test_opt_out_leaves_the_allocator_alone():
    status, kept = _probe("tuned", LIMNER_MALLOC="0")
    assert status == "off (LIMNER_MALLOC=0)" and kept < 4


@pytest.mark.parametrize("env,expected", [
    ({"LIMNER_MALLOC": "off"}, "off (LIMNER_MALLOC=0)"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "unchanged (jemalloc preloaded)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "unchanged (GLIBC_TUNABLES sets malloc options)"),
])
def test_reasons_to_leave_it_alone(monkeypatch, env, expected):
    for key in ("LIMNER_MALLOC", "LD_PRELOAD", "GLIBC_TUNABLES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if platform.libc_ver()[0] != "glibc" and "LIMNER_MALLOC" not in env:
        pytest.skip("off glibc every case reads 'not glibc'")
    assert allocator._reason_to_skip() == expected


def test_status_before_tuning_says_default(monkeypatch):
    monkeypatch.setattr(allocator, "_status", None)
    assert allocator.allocator_status().startswith("default")
