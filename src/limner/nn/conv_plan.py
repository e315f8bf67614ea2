"""Which method computes each part of a 3x3 convolution on this CPU: measured once, then kept.

limner's Winograd kernels (:mod:`limner.nn.conv`) beat oneDNN's direct convolutions on most
layers of a small U-Net on the AMD EPYCs they were written on, and a fixed rule says where to use
them: F(4x4, 3x3) on maps from 8x8 up whose sides are multiples of 4, F(2x2, 3x3) on other even
sizes, oneDNN below 8x8. That rule is a fact about those CPUs, not a law. oneDNN is Intel's
library and its speed differs by CPU (with AMX, bfloat16 far more so). Even on an AMD EPYC
family 25 model 17 the Winograd filter gradient of a 32-channel layer at 32x32 (batch 32) ran
slower than oneDNN's in some timings, while its forward took half oneDNN's time. So where the
kernels could take a call, each part of it takes the method that ran it fastest on this machine:

- the forward pass (in training with the filter transform each call, since the weight changes
  every step; in inference with the transformed or oneDNN-reordered filter kept);
- the input gradient (Winograd with the rotated filter, or oneDNN's backward);
- the filter gradient (Winograd's domain, for float32 F(4x4, 3x3) only, or oneDNN's backward).

The candidates are F(4x4, 3x3) where the sides allow it, F(2x2, 3x3) and oneDNN, on maps from 4x4
up. The fixed rule's method is the default: another method takes a part only when it beat the
default's by :data:`MARGIN` in two independent timings (the second only runs when the first says
to move), so timing noise leaves a layer where the rule puts it.

The idea is cuDNN's benchmark mode (``torch.backends.cudnn.benchmark``: time the algorithms for a
shape at its first call) together with FFTW's "wisdom" (Frigo & Johnson, "The design and
implementation of FFTW3", 2005): the measured choice is saved and reused. The first call of a
shape times the candidates on scratch tensors of that shape. They come from a private random
generator, so the global random stream is untouched. Every candidate runs in turn for several
rounds, so that other load on the machine slows them alike, and the best time of each counts.
The choices go to ``conv-plan-<hash>.json`` beside the compiled kernels. The file is keyed by
the build (sources, compiler, CPU flags, torch, kernel variant) and the CPU model; its entries
are keyed by mode (training or inference), precision, batch (rounded up to a power of two),
channels, map size, bias, thread count and the candidates. Every later call and every later
process on the machine reads the choice instead of timing. A file lock keeps concurrent
processes (DDP ranks, say) from timing the same shape twice. So results stay bitwise
deterministic for a given machine and setting. A training checkpoint also carries the plans its
run used (:func:`plans_of`), and a resume pins them (:func:`pin`) ahead of the file. So exact
resume holds even where the cache was cleared and timed again, or another machine resumes the
run (as far as oneDNN computes the same bits there). Timing a new shape costs
a few tens of milliseconds for sampling and ~0.2-0.5 s for training, once per machine.

``LIMNER_CONV_TUNE=0`` turns the measuring off and keeps the fixed rule (limner's behaviour
before plans). The test suite runs that way, so that timing cannot change its results, and it
tests the plans themselves on their own.

Sampling records which layers left the rule, since that changes rounding
(:func:`limner.nn.conv.cpu_kernel_setting`): :func:`trace` collects the plans that a block of
code used.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from limner.environment import cpu_model
from limner.fsutil import atomic_write
from limner.nn import kernels

__all__ = ["MARGIN", "METHODS", "ONEDNN", "PARTS", "Plan", "TILES", "TUNE", "Traced", "WINOGRAD2", "WINOGRAD4",
           "choose", "decide", "pin", "plan_key", "plans_of", "rounded_batch", "status", "time_parts", "trace"]

log = logging.getLogger(__name__)

TUNE = os.environ.get("LIMNER_CONV_TUNE", "1").strip().lower() not in ("0", "off", "false", "no")
# Another method takes a part only when its best time is below (1 - MARGIN) x the default's: on the
# EPYC model 17 two runs of the same oneDNN convolution differed by up to ~20% in single timings,
# ~5% in best-of-7.
MARGIN = 0.10
ROUNDS = 7  # timed rounds per candidate, after one warm-up round
PARTS = ("forward", "input_grad", "weight_grad")
WINOGRAD4, WINOGRAD2, ONEDNN = "winograd4", "winograd2", "onednn"  # F(4x4, 3x3), F(2x2, 3x3), direct
METHODS = (WINOGRAD4, WINOGRAD2, ONEDNN)
TILES = {WINOGRAD4: 4, WINOGRAD2: 2, ONEDNN: 0}  # each method's Winograd output tile (0: none)
_FORMAT = 2


@dataclass(frozen=True)
class Plan:
    """The method of each part of one convolution: ``"winograd4"`` (F(4x4, 3x3)),
    ``"winograd2"`` (F(2x2, 3x3)) or ``"onednn"``. ``input_grad`` and ``weight_grad`` matter
    only in training; the filter gradient has a Winograd method only for float32 F(4x4, 3x3)."""

    forward: str = ONEDNN
    input_grad: str = ONEDNN
    weight_grad: str = ONEDNN

    def tile(self, part: str) -> int:
        """The Winograd output tile of ``part`` (4 or 2), or 0 for oneDNN."""
        return TILES[getattr(self, part)]

    def uses_winograd(self, training: bool) -> bool:
        parts = PARTS if training else ("forward",)
        return any(getattr(self, part) != ONEDNN for part in parts)

    def describe(self) -> str:
        return ", ".join(f"{part} {getattr(self, part)}" for part in PARTS)


class Traced(NamedTuple):
    """A plan looked up inside :func:`trace`, with the plan the fixed rule gives the same call
    (the one used without measuring)."""

    plan: Plan
    default: Plan

    @property
    def moved(self) -> bool:
        return self.plan != self.default


_trace: contextvars.ContextVar[dict[str, Traced] | None] = contextvars.ContextVar("limner_conv_plan_trace",
                                                                                   default=None)
_lock = threading.Lock()
_plans: dict[str, Plan] = {}  # this process's plans, from the file and from timing
_pinned: dict[str, Plan] = {}  # plans a resumed run brought from its checkpoint (pin), ahead of the file
_loaded_from: Path | None = None


def rounded_batch(batch: int) -> int:
    """The batch a plan is kept and timed for: ``batch`` rounded up to a power of two (a
    sampler's last, smaller batch reuses the full one's)."""
    return 1 << max(0, int(batch) - 1).bit_length()


def plan_key(training: bool, bfloat16: bool, batch: int, in_channels: int, height: int, width: int,
             out_channels: int, bias: bool, candidates: dict[str, tuple[str, ...]]) -> str:
    """The key one choice is kept under: what the relative speed of the methods depends on, and
    which methods were candidates (settings such as ``LIMNER_WINOGRAD=2`` narrow them); the batch
    as :func:`rounded_batch`."""
    short = {WINOGRAD4: "4", WINOGRAD2: "2", ONEDNN: "d"}
    methods = " ".join(f"{part[0]}{''.join(short[m] for m in candidates.get(part, ()))}" for part in PARTS)
    return (f"{'train' if training else 'infer'} {'bf16' if bfloat16 else 'fp32'} n{rounded_batch(batch)} "
            f"{in_channels}x{height}x{width}->{out_channels} b{int(bias)} t{torch.get_num_threads()} {methods}")


def decide(ms: dict[str, dict[str, float]], default: Plan, margin: float = MARGIN,
           confirm: dict[str, dict[str, float]] | None = None) -> Plan:
    """The plan from best times (ms per method, per part): per part, of the methods that beat
    ``default``'s by more than ``margin`` in ``ms`` (and in a second timing ``confirm``, if given),
    the one with the least time in all of them; the default's where none did, and for parts not
    timed or whose default was not timed."""
    timings = [ms] if confirm is None else [ms, confirm]
    chosen = {}
    for part in PARTS:
        incumbent = getattr(default, part)
        runs = [t.get(part, {}) for t in timings]
        winners = [m for m in runs[0] if m != incumbent
                   and all(incumbent in t and m in t and t[m] < (1.0 - margin) * t[incumbent] for t in runs)]
        chosen[part] = min(winners, key=lambda m: sum(t[m] for t in runs)) if winners else incumbent
    return Plan(**chosen)


def time_parts(parts: dict[str, dict[str, Callable[[], Any]]], rounds: int = ROUNDS) -> dict[str, dict[str, float]]:
    """Best wall time in ms of each method's candidate per part: one warm-up round, then
    ``rounds`` rounds in which every candidate runs once in turn."""
    best = {part: dict.fromkeys(candidates, float("inf")) for part, candidates in parts.items()}
    for r in range(rounds + 1):
        for part, candidates in parts.items():
            for method, run in candidates.items():
                t0 = time.perf_counter()
                run()
                if r:
                    best[part][method] = min(best[part][method], (time.perf_counter() - t0) * 1e3)
    return best


def _plan_file() -> Path:
    identity = f"{kernels.build_id()}\0{cpu_model()}\0{_FORMAT}".encode()
    return kernels._kernel_dir() / f"conv-plan-{hashlib.sha256(identity).hexdigest()[:16]}.json"


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The plan entries of a plan file; none where it is missing or unreadable (they are timed again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("plans") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {key: entry for key, entry in entries.items() if _names_a_plan(entry)}


def _names_a_plan(entry: object) -> bool:
    """Whether a plan-file or checkpoint entry names a known method for every part."""
    return isinstance(entry, Mapping) and all(entry.get(part) in METHODS for part in PARTS)


def _plan_of(entry: Mapping[str, Any]) -> Plan:
    return Plan(**{part: entry[part] for part in PARTS})


def _load_file() -> None:
    """Fill this process's plans from the plan file (once; caller holds _lock)."""
    global _loaded_from
    path = _plan_file()
    if _loaded_from != path:
        _plans.clear()
        _plans.update({key: _plan_of(entry) for key, entry in _read(path).items()})
        _loaded_from = path


def choose(key: str, default: Plan, measure: Callable[[], dict[str, dict[str, float]]]) -> Plan:
    """The plan kept for ``key`` on this machine; the first time, ``measure()`` (best ms per
    method, per part), decided against ``default`` and saved. ``default`` itself when measuring
    is off."""
    if not TUNE:
        return _note(key, default, default)
    plan = _pinned.get(key) or _plans.get(key)
    if plan is None:
        with _lock:
            _load_file()
            plan = _plans.get(key)
            if plan is None:
                plan = _measure_and_save(key, default, measure)
                _plans[key] = plan
    return _note(key, plan, default)


def _measure_and_save(key: str, default: Plan, measure: Callable[[], dict[str, dict[str, float]]]) -> Plan:
    """Time, decide and add the plan to the file, under the file's lock. Where timing fails (out
    of memory, say) the shape keeps the default in this process, nothing saved; where the folder
    is not writable the plan is kept in this process only (each process then times it anew)."""
    path = _plan_file()
    plan: Plan | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with kernels._file_lock(path.with_suffix(".lock")):
            entries = _read(path)
            if key in entries:  # another process timed it meanwhile
                return _plan_of(entries[key])
            plan, timings = _timed_plan(key, default, measure)
            if timings is None:
                return plan
            rounded = [{part: {m: round(t, 4) for m, t in times.items()} for part, times in ms.items()}
                       for ms in timings]
            entries[key] = {**{part: getattr(plan, part) for part in PARTS}, "default": default.describe(),
                            "ms": rounded[0], **({"ms_again": rounded[1]} if len(rounded) > 1 else {}),
                            "timed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            document = {"format": _FORMAT, "cpu": cpu_model(), "torch": torch.__version__,
                        "build": kernels.build_id(), "plans": dict(sorted(entries.items()))}
            atomic_write(path, lambda f: f.write(json.dumps(document, indent=1).encode()), fsync=False)
            return plan
    except OSError as error:
        log.warning("limner conv plan: cannot keep plans in %s (%s); this process times each shape itself",
                    path, error)
        return plan if plan is not None else _timed_plan(key, default, measure)[0]


def _timed_plan(key: str, default: Plan, measure: Callable[[], dict[str, dict[str, float]]]
                ) -> tuple[Plan, list[dict[str, dict[str, float]]] | None]:
    """(plan, the timings it was decided from), or (default, None) where timing failed. A part
    leaves the default's method only when a second, independent timing agrees: a burst of other
    load on the machine during one timing cannot move it."""
    try:
        timings = [measure()]
        plan = decide(timings[0], default)
        if plan != default:
            timings.append(measure())
            plan = decide(timings[0], default, confirm=timings[1])
    except (RuntimeError, MemoryError) as error:
        log.warning("limner conv plan: timing %s failed (%s); it keeps the default (%s)", key, error,
                    default.describe())
        return default, None
    times = " / ".join("; ".join(f"{part} " + ", ".join(f"{m} {t:.2f}" for m, t in ts.items())
                                 for part, ts in ms.items()) for ms in timings)
    log.info("limner conv plan: %s: %s (ms: %s)", key, plan.describe(), times)
    return plan, timings


def _note(key: str, plan: Plan, default: Plan) -> Plan:
    used = _trace.get()
    if used is not None:
        used[key] = Traced(plan, default)
    return plan


def plans_of(used: Mapping[str, Traced]) -> dict[str, dict[str, str]]:
    """The plans of a :func:`trace` as plain data ({key: {part: method}}), for a checkpoint."""
    return {key: {part: getattr(traced.plan, part) for part in PARTS} for key, traced in sorted(used.items())}


def pin(plans: Mapping[str, Mapping[str, str]]) -> int:
    """Use these plans (:func:`plans_of`, from a checkpoint) for their keys in this process, ahead
    of the machine's plan file, so a resumed run computes each convolution by the methods its
    first part did, whatever the cache now holds (cleared, re-timed, another machine). Applies
    while plans are measured (``LIMNER_CONV_TUNE=0`` keeps the fixed rule). Entries that name
    unknown methods are skipped; returns how many were pinned."""
    pinned = {key: _plan_of(entry) for key, entry in plans.items() if _names_a_plan(entry)}
    with _lock:
        _pinned.update(pinned)
    return len(pinned)


@contextmanager
def trace() -> Iterator[dict[str, Traced]]:
    """Collect {key: (plan, default)} of every convolution plan looked up in this thread (or
    task) inside the block."""
    used: dict[str, Traced] = {}
    token = _trace.set(used)
    try:
        yield used
    finally:
        _trace.reset(token)


def status() -> str:
    """One line for ``limner env``: whether plans are measured and what this machine's file holds."""
    if not TUNE:
        return "off (LIMNER_CONV_TUNE=0): the fixed rule (Winograd from 8x8 maps up, oneDNN below)"
    if not kernels.available():
        return "not used (no compiled kernels)"
    path = _plan_file()
    entries = _read(path)
    counts = {method: sum(1 for entry in entries.values() for part in PARTS
                          if entry[part] == method and part in entry.get("ms", {})) for method in METHODS}
    return (f"measured per layer shape on this CPU: {len(entries)} shapes timed; parts on "
            + ", ".join(f"{method} {count}" for method, count in counts.items()) + f" ({path})")
