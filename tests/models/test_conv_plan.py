"""Measured convolution plans (:mod:`limner.nn.conv_plan`): the decision rule, the timing, the
plan file shared by processes, and :class:`limner.nn.Conv2d` computing each part of a 3x3
convolution by the method its plan names, with the same results as that method alone."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import limner.nn.conv as conv
from limner.nn import Conv2d, conv_plan, kernels
from limner.nn.conv_plan import Plan

needs_kernel = pytest.mark.skipif(
    not kernels.available(), reason=f"compiled kernels unavailable: {kernels.status()}")

CL = torch.channels_last


@pytest.fixture
def plans(tmp_path, monkeypatch):
    """Measuring on, with this test's own plan file (the kernels' folder copied, so that a new
    process finds the same build) and an empty in-process plan table."""
    kernel_dir = tmp_path / "kernels"
    kernel_dir.mkdir()
    if kernels.available():
        built = kernels._kernel_dir()
        for name in (f"{kernels.build_id()}.so", *(p.name for p in built.glob("tuning-*.json"))):
            shutil.copy(built / name, kernel_dir / name)
    monkeypatch.setenv("LIMNER_KERNEL_DIR", str(kernel_dir))
    monkeypatch.setattr(conv_plan, "TUNE", True)
    monkeypatch.setattr(conv_plan, "_plans", {})
    monkeypatch.setattr(conv_plan, "_loaded_from", None)
    return kernel_dir


def test_decide_moves_a_part_to_onednn_only_when_it_was_clearly_faster():
    ms = {"forward": (1.0, 0.95), "input_grad": (1.0, 0.85), "weight_grad": (2.0, 2.5)}
    assert conv_plan.decide(ms) == Plan(forward=True, input_grad=False, weight_grad=True)
    assert conv_plan.decide(ms, margin=0.0) == Plan(forward=False, input_grad=False, weight_grad=True)
    assert conv_plan.decide({"forward": (1.0, 0.5)}) == Plan(forward=False)  # parts not timed stay
    assert conv_plan.decide({}) == conv_plan.WINOGRAD


def test_time_parts_lets_the_candidates_take_turns_and_keeps_each_ones_best(monkeypatch):
    """A fake clock that each candidate advances by its own duration per call: 100 ms in the
    warm-up round, then the listed ones."""
    durations = {"a-w": [100, 5, 3, 4], "a-o": [100, 9, 2, 7], "b-w": [100, 1, 1, 1], "b-o": [100, 3, 3, 3]}
    calls, now = [], [0.0]

    def candidate(name):
        def run():
            now[0] += durations[name][sum(c == name for c in calls)] / 1e3
            calls.append(name)
        return run

    monkeypatch.setattr(conv_plan.time, "perf_counter", lambda: now[0])
    best = conv_plan.time_parts({"a": (candidate("a-w"), candidate("a-o")),
                                 "b": (candidate("b-w"), candidate("b-o"))}, rounds=3)
    assert calls == ["a-w", "a-o", "b-w", "b-o"] * 4  # one warm-up round, then turns
    assert best == {"a": pytest.approx((3.0, 2.0)), "b": pytest.approx((1.0, 3.0))}


def test_a_plan_is_measured_once_then_read_from_the_file(plans):
    measured = []

    def measure():
        measured.append(1)
        return {"forward": (2.0, 1.0), "input_grad": (1.0, 2.0)}

    key = conv_plan.plan_key(True, False, 24, 32, 16, 16, 64, 4, True)
    assert "n32 " in key and key.startswith("train fp32")  # the batch rounded up to a power of two
    expected = Plan(forward=False, input_grad=True, weight_grad=True)
    with conv_plan.trace() as used:
        assert conv_plan.choose(key, measure) == expected
        assert conv_plan.choose(key, measure) == expected
    assert measured == [1] and used == {key: expected}
    document = json.loads(conv_plan._plan_file().read_text())
    assert document["plans"][key]["forward"] == "onednn" and document["plans"][key]["ms"]["forward"] == [2.0, 1.0]
    assert document["cpu"] and document["torch"] == torch.__version__
    # another process: nothing in memory, the file decides
    conv_plan._plans.clear()
    conv_plan._loaded_from = None
    assert conv_plan.choose(key, lambda: pytest.fail("timed again")) == expected
    # measuring off: every part on Winograd, nothing timed
    conv_plan.TUNE = False
    assert conv_plan.choose("another", lambda: pytest.fail("timed")) == conv_plan.WINOGRAD


def test_an_unreadable_plan_file_is_measured_again_and_rewritten(plans):
    path = conv_plan._plan_file()
    path.write_text('{"plans": {"k": {"forward": "gpu"}}, "trailing')
    assert conv_plan.choose("k", lambda: {"forward": (1.0, 3.0)}) == conv_plan.WINOGRAD
    assert json.loads(path.read_text())["plans"]["k"]["forward"] == "winograd"
    path.write_text(json.dumps({"plans": {"k": {"forward": "sideways", "input_grad": "winograd",
                                                 "weight_grad": "winograd"}}}))
    conv_plan._plans.clear()
    conv_plan._loaded_from = None
    assert conv_plan.choose("k", lambda: {"forward": (3.0, 1.0)}) == Plan(forward=False)


def _pair(bias: bool = True, cin: int = 32, cout: int = 48, seed: int = 0) -> tuple[Conv2d, torch.nn.Conv2d]:
    torch.manual_seed(seed)
    fast = Conv2d(cin, cout, 3, padding=1, bias=bias)
    plain = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    plain.load_state_dict(fast.state_dict())
    return fast, plain


def _train(module, x, go, bf16: bool):
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = module(xi)
    gx, gw, *gb = torch.autograd.grad(y, [xi, module.weight, *([module.bias] if module.bias is not None else [])],
                                      go.to(y.dtype))
    return y.detach(), gx, gw, (gb[0] if gb else None)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


ALL_PLANS = [Plan(*bits) for bits in itertools.product((True, False), repeat=3)]


# bfloat16 filter gradients are oneDNN's in every plan: weight_grad=False is the same case there
PLAN_CASES = [(plan, False) for plan in ALL_PLANS] + [(plan, True) for plan in ALL_PLANS if plan.weight_grad]


@needs_kernel
@pytest.mark.parametrize("plan,bf16", PLAN_CASES,
                         ids=lambda v: v.describe().replace(", ", "/").replace(" ", "=") if isinstance(v, Plan)
                         else ("bf16" if v else "fp32"))
def test_each_part_runs_where_the_plan_says_with_that_methods_result(plan, bf16, monkeypatch):
    """Parts on oneDNN give nn.Conv2d's bits; parts on Winograd its rounding (F(4x4, 3x3))."""
    monkeypatch.setattr(conv_plan, "choose", lambda key, measure: plan)
    fast, plain = _pair()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 32, 16, 16, generator=g).to(torch.bfloat16 if bf16 else torch.float32).contiguous(
        memory_format=CL)
    go = torch.randn(4, 48, 16, 16, generator=g).contiguous(memory_format=CL)
    y1, gx1, gw1, gb1 = _train(fast, x, go, bf16)
    y2, gx2, gw2, gb2 = _train(plain, x, go, bf16)
    bound = 2e-2 if bf16 else 1e-4  # Winograd against oneDNN (bf16: both round the output)
    for name, on_winograd, a, b in (("output", plan.forward, y1, y2), ("input gradient", plan.input_grad, gx1, gx2)):
        assert a.dtype == b.dtype, name
        if on_winograd:
            assert _rel(a, b) < bound, name
        else:
            assert torch.equal(a, b), f"{name} by oneDNN differs from nn.Conv2d's"
    if plan.weight_grad and not bf16:
        assert _rel(gw1, gw2) < 1e-4 and _rel(gb1, gb2) < 1e-5
    else:
        assert torch.equal(gw1, gw2), "filter gradient by oneDNN differs from nn.Conv2d's"
        assert torch.equal(gb1, gb2) if not bf16 else _rel(gb1, gb2) < 1e-2
    # inference: the forward alone, oneDNN's by the reordered-weight path
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        yi, reference = fast(x), fast._onednn_forward(x)
        if not plan.forward:
            assert torch.equal(yi, reference)
        else:
            assert _rel(yi, reference) < bound


@needs_kernel
def test_measuring_leaves_the_random_stream_the_weights_and_their_gradients_alone(plans):
    fast, _ = _pair()
    x = torch.randn(8, 32, 16, 16).contiguous(memory_format=CL).requires_grad_()
    weight = fast.weight.detach().clone()
    rng = torch.random.get_rng_state()
    with conv_plan.trace() as used:
        y = fast(x)  # times this shape: forward, input gradient, filter gradient
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert fast.weight.grad is None and torch.equal(fast.weight, weight)
    (key,) = used
    entry = json.loads(conv_plan._plan_file().read_text())["plans"][key]
    assert set(entry["ms"]) == {"forward", "input_grad", "weight_grad"}
    assert all(w > 0 and o > 0 for w, o in entry["ms"].values())
    y.sum().backward()
    with conv_plan.trace() as again:
        y2 = fast(x)
    assert again == used and torch.equal(y, y2)  # the kept plan, the same result


SUBPROCESS = r"""
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from limner.nn import Conv2d, conv_plan
torch.manual_seed(0)
fast = Conv2d(32, 48, 3, padding=1)
g = torch.Generator().manual_seed(1)
x = torch.randn(4, 32, 16, 16, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
with conv_plan.trace() as used:
    y = fast(x)
y.backward(torch.ones_like(y))
torch.save({"y": y.detach(), "gx": x.grad, "gw": fast.weight.grad}, sys.argv[2])
print(json.dumps({key: plan.describe() for key, plan in used.items()}))
"""


@needs_kernel
def test_a_new_process_follows_the_plan_file_bit_for_bit(plans, tmp_path):
    """A plan written by one process (here a mixed one) decides the next process's methods, so a
    resumed run computes what the first one did."""
    mixed = Plan(forward=False, input_grad=True, weight_grad=False)
    key = conv_plan.plan_key(True, False, 4, 32, 16, 16, 48, 4, True)
    conv_plan.choose(key, lambda: {"forward": (2.0, 1.0), "input_grad": (1.0, 2.0), "weight_grad": (2.0, 1.0)})
    written = conv_plan._plan_file().read_bytes()
    env = {**os.environ, "LIMNER_CONV_TUNE": "1", "LIMNER_KERNEL_DIR": str(plans)}
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, str(torch.get_num_threads()), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {key: mixed.describe()}
    assert conv_plan._plan_file().read_bytes() == written  # read, not timed again
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.manual_seed(0)
    fast = Conv2d(32, 48, 3, padding=1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 32, 16, 16, generator=g).contiguous(memory_format=CL).requires_grad_()
    y = fast(x)
    y.backward(torch.ones_like(y))
    assert torch.equal(theirs["y"], y.detach()) and torch.equal(theirs["gx"], x.grad)
    assert torch.equal(theirs["gw"], fast.weight.grad)
    plain = torch.nn.Conv2d(32, 48, 3, padding=1)
    plain.load_state_dict(fast.state_dict())
    assert torch.equal(y.detach(), plain(x.detach()))  # the forward really was oneDNN's


@needs_kernel
def test_the_record_setting_names_layers_whose_forward_left_winograd():
    base = conv.cpu_kernel_setting()
    assert conv.cpu_kernel_setting(plans={"infer fp32 a": conv_plan.WINOGRAD}) == base
    moved = conv.cpu_kernel_setting(plans={"infer fp32 a": Plan(forward=False), "infer fp32 b": conv_plan.WINOGRAD})
    assert moved.startswith(base + "+onednn:") and len(moved) == len(base) + len("+onednn:") + 8
    assert conv.cpu_kernel_setting(plans={"infer fp32 b": Plan(forward=False)}) != moved  # which layers
    assert conv.cpu_kernel_setting(plans={"train fp32 a": Plan(forward=True, input_grad=False)}) == base


def test_a_shape_whose_timing_fails_stays_on_winograd_unsaved(plans, caplog):
    def fails():
        raise RuntimeError("out of memory while timing")

    with caplog.at_level("WARNING", logger="limner.nn.conv_plan"):
        assert conv_plan.choose("k", fails) == conv_plan.WINOGRAD
    assert "timing k failed" in caplog.text
    assert not conv_plan._plan_file().exists()  # a later process times it again
    assert conv_plan.choose("k", lambda: pytest.fail("timed again in this process")) == conv_plan.WINOGRAD


def test_a_folder_that_cannot_be_written_keeps_the_plan_in_this_process(plans, monkeypatch, caplog):
    def no_writes(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(conv_plan, "atomic_write", no_writes)
    timed = []
    with caplog.at_level("WARNING", logger="limner.nn.conv_plan"):
        assert conv_plan.choose("k", lambda: timed.append(1) or {"forward": (3.0, 1.0)}) == Plan(forward=False)
    assert "cannot keep plans" in caplog.text and timed == [1]
    assert conv_plan.choose("k", lambda: pytest.fail("timed again in this process")) == Plan(forward=False)
