"""The kernels' builds for different vector widths and register tiles (``kernels.VARIANTS``):
each computes the same bits, the fastest on this CPU is chosen by timing once and remembered,
and ``LIMNER_KERNEL_VARIANT`` picks one by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from limner.nn import kernels
from limner.nn.attention import _split
from limner.nn.norms import group_norm_act

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
needs_kernel = pytest.mark.skipif(
    not kernels.available(), reason=f"compiled kernels unavailable: {kernels.status()}")
CL = torch.channels_last


def _outputs() -> list[torch.Tensor]:
    """Winograd F(2x2)/F(4x4) forward, filters and filter gradients, attention forward and backward, group norm
    forward and backward (float32 channels-last, bfloat16 NCHW and channels-last), through the public entry points, on fixed
    inputs."""
    g = torch.Generator().manual_seed(3)
    out = []
    x = torch.randn(3, 48, 12, 20, generator=g).contiguous(memory_format=CL)
    w, b = torch.randn(80, 48, 3, 3, generator=g), torch.randn(80, generator=g)
    for tile in (2, 4):
        U = kernels.winograd_filter(w, tile=tile)
        out += [U, kernels.winograd_conv3x3(x, U, b), kernels.winograd_filter(w, rotate=True, tile=tile)]
    gy = torch.randn(3, 80, 12, 20, generator=g).contiguous(memory_format=CL)
    out += [kernels.winograd_weight_grad(x, gy, tile=4), kernels.winograd_weight_grad(x, gy, tile=2)]
    qkv = torch.randn(2, 37, 3 * 96, generator=g)  # 37 keys: tails of every key tile
    q, k, v = _split(qkv, None)
    o, lse = kernels.attention_forward(q, k, v, 3)
    d = torch.zeros_like(qkv)
    kernels.attention_backward(q, k, v, o, lse, torch.randn(2, 37, 96, generator=g), *_split(d, None), 3)
    out += [o, lse, d]
    xg = torch.randn(2, 64, 8, 8, generator=g).contiguous(memory_format=CL).requires_grad_()
    wg, bg = torch.randn(64, generator=g).requires_grad_(), torch.randn(64, generator=g).requires_grad_()
    y = group_norm_act(xg, wg, bg, 16)
    y.backward(torch.randn(y.shape, generator=g).contiguous(memory_format=CL))
    out += [y.detach(), xg.grad, wg.grad, bg.grad]
    xh = torch.randn(2, 64, 8, 8, generator=g).bfloat16()  # bfloat16 NCHW: the autocast training kernels
    wh, bh = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    yh, *coeffs = kernels.group_norm_act_forward(xh, wh, bh, 16, 1e-5, True)
    gh = torch.randn(2, 64, 8, 8, generator=g).bfloat16()
    out += [yh, *coeffs, *kernels.group_norm_act_backward(xh, gh, wh, *coeffs, 16, True)]
    xh, gh = xh.contiguous(memory_format=CL), gh.contiguous(memory_format=CL)  # bfloat16 channels-last
    yh, *coeffs = kernels.group_norm_act_forward(xh, wh, bh, 16, 1e-5, True)
    return out + [yh, *coeffs, *kernels.group_norm_act_backward(xh, gh, wh, *coeffs, 16, True)]


@needs_kernel
@needs_cc
def test_every_variant_computes_the_same_bits(monkeypatch):
    """The choice between builds changes speed only, so exact resume and bitwise replay do not
    depend on which build a machine timed fastest."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    results = {}
    for name in kernels.VARIANTS:
        lib = kernels._declare(__import__("ctypes").CDLL(str(kernels._build(cc, name))))
        monkeypatch.setattr(kernels, "_lib", lib)
        results[name] = _outputs()
    first, *others = results
    for name in others:
        for i, (a, b) in enumerate(zip(results[first], results[name])):
            assert torch.equal(a, b), f"{name} differs from {first} in output {i}"


def _probe(env: dict) -> subprocess.CompletedProcess:
    code = "from limner.nn import kernels; print(kernels.available(), '|', kernels.status())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


@needs_cc
def test_the_fastest_build_is_timed_once_and_remembered(tmp_path):
    env = {"LIMNER_KERNEL_DIR": str(tmp_path)}
    env.pop("LIMNER_KERNEL_VARIANT", None)
    first = _probe({**env, "LIMNER_KERNEL_VARIANT": ""})
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("True | compiled") and "the fastest on this CPU" in first.stdout, first.stdout
    records = list(tmp_path.glob("tuning-*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert set(record["ms"]) == set(kernels.VARIANTS)
    assert record["variant"] == min(record["ms"], key=record["ms"].get)
    assert f"variant {record['variant']}," in first.stdout and record["cpu"]
    builds = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.so")}
    assert len(builds) == len(kernels.VARIANTS)
    # a later process reads the record: no timing, no build, the same variant
    record["ms"] = {name: (0.5 if name == record["variant"] else 9.0) for name in record["ms"]}
    records[0].write_text(json.dumps(record))
    second = _probe({**env, "LIMNER_KERNEL_VARIANT": ""})
    assert second.returncode == 0, second.stderr
    assert f"{record['variant']} 0.50 ms" in second.stdout, second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.so")} == builds


@needs_cc
def test_a_record_naming_an_unknown_variant_is_timed_again(tmp_path):
    (tmp_path / "x").mkdir()
    forced = _probe({"LIMNER_KERNEL_DIR": str(tmp_path / "x"), "LIMNER_KERNEL_VARIANT": "vl4-r8"})
    assert forced.returncode == 0 and "vl4-r8 from LIMNER_KERNEL_VARIANT" in forced.stdout, forced.stdout
    assert [p.name.split("-")[1] for p in (tmp_path / "x").glob("*.so")] == ["vl4"]  # only that build
    assert kernels._read_tuning(tmp_path / "missing.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"variant": "vl32-r99", "ms": {}}))
    assert kernels._read_tuning(bad) is None
    bad.write_text("{not json")
    assert kernels._read_tuning(bad) is None


def test_an_unknown_forced_variant_falls_back_with_a_reason(tmp_path):
    proc = _probe({"LIMNER_KERNEL_DIR": str(tmp_path), "LIMNER_KERNEL_VARIANT": "avx9000"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False | build failed"), proc.stdout
    assert "LIMNER_KERNEL_VARIANT='avx9000'" in proc.stdout and "vl8-r6" in proc.stdout
    assert not list(tmp_path.glob("*.so"))
