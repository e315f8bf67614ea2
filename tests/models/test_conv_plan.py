"""Measured convolution plans (:mod:`limner.nn.conv_plan`): the decision rule, the timing, the
plan file shared by processes, and :class:`limner.nn.Conv2d` computing each part of a 3x3
convolution by the method its plan names, with the same results as that method alone."""

from __future__ import annotations

import itertools
import json
import os
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
def plans(tmp_path, monkeypatch, kernel_copy):
    """Measuring on, with this test's own plan file (the kernels' folder copied, so that a new
    process finds the same build) and an empty in-process plan table."""
    kernel_dir = kernel_copy(tmp_path / "kernels")
    monkeypatch.setenv("LIMNER_KERNEL_DIR", str(kernel_dir))
    monkeypatch.setattr(conv_plan, "TUNE", True)
    monkeypatch.setattr(conv_plan, "_plans", {})
    monkeypatch.setattr(conv_plan, "_pinned", {})
    monkeypatch.setattr(conv_plan, "_loaded_from", None)
    return kernel_dir


W4, W2, D = conv_plan.WINOGRAD4, conv_plan.WINOGRAD2, conv_plan.ONEDNN
RULE = Plan(W4, W4, W4)  # the fixed rule on a float32 map from 8x8 up with sides of multiples of 4


def test_decide_leaves_the_fixed_rule_only_for_a_clearly_faster_method():
    ms = {"forward": {W4: 1.0, W2: 1.3, D: 0.95}, "input_grad": {W4: 1.0, W2: 0.85, D: 0.88},
          "weight_grad": {W4: 2.0, D: 2.5}}
    assert conv_plan.decide(ms, RULE) == Plan(forward=W4, input_grad=W2, weight_grad=W4)
    assert conv_plan.decide(ms, RULE, margin=0.0) == Plan(forward=D, input_grad=W2, weight_grad=W4)
    assert conv_plan.decide({"forward": {W4: 1.0, D: 0.5}}, RULE) == Plan(D, W4, W4)  # parts not timed stay
    assert conv_plan.decide({}, RULE) == RULE
    small_map = Plan()  # the rule's oneDNN below 8x8: Winograd must beat it
    assert conv_plan.decide({"forward": {W4: 0.8, W2: 0.95, D: 1.0}}, small_map) == Plan(forward=W4)
    assert conv_plan.decide({"forward": {W4: 0.95, D: 1.0}}, small_map) == small_map


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
    best = conv_plan.time_parts({"a": {W4: candidate("a-w"), D: candidate("a-o")},
                                 "b": {W4: candidate("b-w"), D: candidate("b-o")}}, rounds=3)
    assert calls == ["a-w", "a-o", "b-w", "b-o"] * 4  # one warm-up round, then turns
    assert best == {"a": {W4: pytest.approx(3.0), D: pytest.approx(2.0)},
                    "b": {W4: pytest.approx(1.0), D: pytest.approx(3.0)}}


CANDIDATES = {"forward": (W4, W2, D), "input_grad": (W4, W2, D), "weight_grad": (W4, D)}


def test_a_plan_is_measured_once_then_read_from_the_file(plans):
    measured = []

    def measure():
        measured.append(1)
        return {"forward": {W4: 2.0, W2: 3.0, D: 1.0}, "input_grad": {W4: 1.0, W2: 1.5, D: 2.0}}

    key = conv_plan.plan_key(True, False, 24, 32, 16, 16, 64, True, CANDIDATES)
    assert key == f"train fp32 n32 32x16x16->64 b1 t{torch.get_num_threads()} f42d i42d w4d"  # batch rounded up
    expected = Plan(forward=D, input_grad=W4, weight_grad=W4)
    with conv_plan.trace() as used:
        assert conv_plan.choose(key, RULE, measure) == expected
        assert conv_plan.choose(key, RULE, measure) == expected
    assert measured == [1, 1] and used == {key: (expected, RULE)} and used[key].moved  # timed twice: it moved
    document = json.loads(conv_plan._plan_file().read_text())
    entry = document["plans"][key]
    assert entry["forward"] == D and entry["ms"]["forward"] == {W4: 2.0, W2: 3.0, D: 1.0}
    assert document["cpu"] and document["torch"] == torch.__version__
    # another process: nothing in memory, the file decides
    conv_plan._plans.clear()
    conv_plan._loaded_from = None
    assert conv_plan.choose(key, RULE, lambda: pytest.fail("timed again")) == expected
    # measuring off: the fixed rule, nothing timed
    conv_plan.TUNE = False
    assert conv_plan.choose("another", RULE, lambda: pytest.fail("timed")) == RULE


def test_an_unreadable_plan_file_is_measured_again_and_rewritten(plans):
    path = conv_plan._plan_file()
    path.write_text('{"plans": {"k": {"forward": "gpu"}}, "trailing')
    assert conv_plan.choose("k", RULE, lambda: {"forward": {W4: 1.0, D: 3.0}}) == RULE
    assert json.loads(path.read_text())["plans"]["k"]["forward"] == W4
    path.write_text(json.dumps({"plans": {"k": {"forward": "sideways", "input_grad": W4, "weight_grad": W4}}}))
    conv_plan._plans.clear()
    conv_plan._loaded_from = None
    assert conv_plan.choose("k", RULE, lambda: {"forward": {W4: 3.0, D: 1.0}}) == Plan(D, W4, W4)


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


# every mix of methods (the filter gradient's Winograd method is float32 F(4x4, 3x3) only)
PLAN_CASES = ([(Plan(f, i, w), False) for f, i, w in itertools.product((W4, W2, D), (W4, W2, D), (W4, D))]
              + [(Plan(f, i, D), True) for f, i in itertools.product((W4, W2, D), repeat=2)])


@needs_kernel
@pytest.mark.parametrize("plan,bf16", PLAN_CASES,
                         ids=lambda v: v.describe().replace(", ", "/").replace(" ", "=") if isinstance(v, Plan)
                         else ("bf16" if v else "fp32"))
def test_each_part_runs_where_the_plan_says_with_that_methods_result(plan, bf16, monkeypatch):
    """Parts on oneDNN give nn.Conv2d's bits; parts on Winograd its rounding, F(2x2, 3x3) no
    worse than oneDNN's and F(4x4, 3x3) ~10x that."""
    monkeypatch.setattr(conv_plan, "choose", lambda key, default, measure: plan)
    fast, plain = _pair()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 32, 16, 16, generator=g).to(torch.bfloat16 if bf16 else torch.float32).contiguous(
        memory_format=CL)
    go = torch.randn(4, 48, 16, 16, generator=g).contiguous(memory_format=CL)
    y1, gx1, gw1, gb1 = _train(fast, x, go, bf16)
    y2, gx2, gw2, gb2 = _train(plain, x, go, bf16)
    bound = {W4: 2e-2 if bf16 else 1e-4, W2: 2e-2 if bf16 else 2e-5}  # against oneDNN (bf16: both round)
    for name, method, a, b in (("output", plan.forward, y1, y2), ("input gradient", plan.input_grad, gx1, gx2)):
        assert a.dtype == b.dtype, name
        if method == D:
            assert torch.equal(a, b), f"{name} by oneDNN differs from nn.Conv2d's"
        else:
            assert 0 < _rel(a, b) < bound[method], name
    if plan.weight_grad == W4:
        assert 0 < _rel(gw1, gw2) < 1e-4 and _rel(gb1, gb2) < 1e-5
    else:
        assert torch.equal(gw1, gw2), "filter gradient by oneDNN differs from nn.Conv2d's"
        assert torch.equal(gb1, gb2) if not bf16 else _rel(gb1, gb2) < 1e-2
    # inference: the forward alone, oneDNN's by the reordered-weight path
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        yi, reference = fast(x), fast._onednn_forward(x)
        if plan.forward == D:
            assert torch.equal(yi, reference)
        else:
            assert 0 < _rel(yi, reference) < bound[plan.forward]
            assert torch.equal(yi, y1)  # the same Winograd method as in training


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
    assert entry["ms"].keys() == {"forward", "input_grad", "weight_grad"}
    assert {part: set(ms) for part, ms in entry["ms"].items()} == {
        "forward": {W4, W2, D}, "input_grad": {W4, W2, D}, "weight_grad": {W4, D}}
    assert all(t > 0 for ms in entry["ms"].values() for t in ms.values())
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
print(json.dumps({key: traced.plan.describe() for key, traced in used.items()}))
"""


@needs_kernel
def test_a_new_process_follows_the_plan_file_bit_for_bit(plans, tmp_path):
    """A plan written by one process (here a mixed one) decides the next process's methods, so a
    resumed run computes what the first one did."""
    mixed = Plan(forward=D, input_grad=W2, weight_grad=D)
    key = conv_plan.plan_key(True, False, 4, 32, 16, 16, 48, True, CANDIDATES)
    assert conv_plan.choose(key, RULE, lambda: {"forward": {W4: 2.0, D: 1.0}, "input_grad": {W4: 2.0, W2: 1.0},
                                                "weight_grad": {W4: 2.0, D: 1.0}}) == mixed
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
def test_the_record_setting_names_layers_whose_forward_left_the_fixed_rule():
    T = conv_plan.Traced
    base = conv.cpu_kernel_setting()
    assert conv.cpu_kernel_setting(plans={"infer fp32 a": T(RULE, RULE), "infer fp32 s": T(Plan(), Plan())}) == base
    moved = conv.cpu_kernel_setting(plans={"infer fp32 a": T(Plan(forward=D), RULE), "infer fp32 b": T(RULE, RULE)})
    assert moved.startswith(base + "+plan:") and len(moved) == len(base) + len("+plan:") + 8
    assert conv.cpu_kernel_setting(plans={"infer fp32 b": T(Plan(forward=D), RULE)}) != moved  # which layers
    assert conv.cpu_kernel_setting(plans={"infer fp32 a": T(Plan(forward=W2), RULE)}) != moved  # which method
    assert conv.cpu_kernel_setting(plans={"train fp32 a": T(Plan(W4, D, W4), RULE)}) == base  # the forward only


def test_a_shape_whose_timing_fails_keeps_the_fixed_rule_unsaved(plans, caplog):
    def fails():
        raise RuntimeError("out of memory while timing")

    with caplog.at_level("WARNING", logger="limner.nn.conv_plan"):
        assert conv_plan.choose("k", RULE, fails) == RULE
    assert "timing k failed" in caplog.text
    assert not conv_plan._plan_file().exists()  # a later process times it again
    assert conv_plan.choose("k", RULE, lambda: pytest.fail("timed again in this process")) == RULE


def test_a_folder_that_cannot_be_written_keeps_the_plan_in_this_process(plans, monkeypatch, caplog):
    def no_writes(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(conv_plan, "atomic_write", no_writes)
    timed = []
    with caplog.at_level("WARNING", logger="limner.nn.conv_plan"):
        assert conv_plan.choose("k", RULE, lambda: timed.append(1) or {"forward": {W4: 3.0, D: 1.0}}) == Plan(D, W4, W4)
    assert "cannot keep plans" in caplog.text and timed == [1, 1]  # a move is timed twice, not more
    assert conv_plan.choose("k", RULE, lambda: pytest.fail("timed again in this process")) == Plan(D, W4, W4)


def test_a_part_leaves_the_fixed_rule_only_when_a_second_timing_agrees(plans):
    timings = iter([{"forward": {W4: 2.0, D: 1.0}, "input_grad": {W4: 2.0, W2: 1.0, D: 3.0}},  # both move
                    {"forward": {W4: 1.0, D: 1.0}, "input_grad": {W4: 2.0, W2: 1.0, D: 3.0}}])  # forward: a burst
    assert conv_plan.choose("k", RULE, lambda: next(timings)) == Plan(W4, W2, W4)
    entry = json.loads(conv_plan._plan_file().read_text())["plans"]["k"]
    assert entry["ms"]["forward"] == {W4: 2.0, D: 1.0} and entry["ms_again"]["forward"] == {W4: 1.0, D: 1.0}
    assert entry["default"] == RULE.describe()
    once = iter([{"forward": {W4: 1.0, D: 2.0}}])  # the rule's choice: timed once
    assert conv_plan.choose("k2", RULE, lambda: next(once)) == RULE
    assert "ms_again" not in json.loads(conv_plan._plan_file().read_text())["plans"]["k2"]


def test_two_timings_that_disagree_on_the_method_but_not_on_leaving_the_rule_take_the_faster_in_both(plans):
    timings = iter([{"forward": {W4: 3.0, W2: 1.0, D: 2.5}}, {"forward": {W4: 3.0, W2: 1.6, D: 1.5}}])
    assert conv_plan.choose("k", RULE, lambda: next(timings)) == Plan(W2, W4, W4)  # 2.6 ms in all, oneDNN 4.0


def test_pinned_plans_from_a_checkpoint_come_before_the_machines_file(plans):
    conv_plan.choose("k", RULE, lambda: {"forward": {W4: 1.0, D: 2.0}})  # the file: the rule
    with conv_plan.trace() as used:
        conv_plan.choose("k", RULE, lambda: pytest.fail("timed"))
    saved = conv_plan.plans_of(used)
    assert saved == {"k": {"forward": W4, "input_grad": W4, "weight_grad": W4}}
    assert conv_plan.pin({"k": {"forward": D, "input_grad": W2, "weight_grad": D},
                          "bad": {"forward": "gpu", "input_grad": D, "weight_grad": D}, "worse": 3}) == 1
    assert conv_plan.choose("k", RULE, lambda: pytest.fail("timed")) == Plan(D, W2, D)
    assert conv_plan.choose("bad", RULE, lambda: {}) == RULE  # not pinned: timed as usual
    conv_plan.TUNE = False  # LIMNER_CONV_TUNE=0 asks for the fixed rule, pins or not
    assert conv_plan.choose("k", RULE, lambda: pytest.fail("timed")) == RULE
