"""2-D convolution with two CPU fast paths: Winograd 3x3 convolutions, and oneDNN's own weight
layout kept across inference calls.

**Winograd.** A 3x3 convolution with stride 1 and padding 1 over a float32 channels-last map of
8x8 or more, with channel counts that are multiples of 16, runs on limner's compiled kernel
(``kernels/winograd.c``), Winograd's minimal filtering (Lavin & Gray 2016,
https://arxiv.org/abs/1509.09308), for the output and for the input gradient (the same kernel
with the filters rotated) and, for F(4x4, 3x3), for the filter gradient: both transforms of
every tile written out once, one batched matrix product summing over the tiles, then the inverse
filter transform (``kernels.winograd_weight_grad``; 1.2-2x faster than oneDNN's on the small
U-Net's layers on a 2-core AMD EPYC, the training step ~5% faster; ``LIMNER_WINOGRAD_WGRAD=0``
leaves it to oneDNN, as F(2x2, 3x3) always does). F(4x4, 3x3) (the default where
H and W are multiples of 4) does 36 multiplies per 4x4 output tile and channel pair where the
direct method does 144: on a 2-core AVX-512 CPU it is 2.3-3.0x faster than oneDNN on the small
U-Net's shapes, with a relative error of ~1e-5 against float64 (oneDNN's: ~1e-6; TF32, PyTorch's
default for convolutions on NVIDIA GPUs, ~1e-3). F(2x2, 3x3) (16 per 2x2 tile, 1.6-1.9x) rounds
no worse than oneDNN. ``LIMNER_WINOGRAD=2`` keeps to F(2x2, 3x3), ``LIMNER_WINOGRAD=0`` turns
the path off (read at import). The transformed filters are kept across inference calls like the
reordered weight below.

**Under bfloat16 autocast** the same kernel takes the bfloat16 maps (or float32 ones) and returns
bfloat16, as autocast's convolution would: it widens each input exactly, computes in float32 with
the float32 weight, and rounds each output once, so its result is closer to the exact product than
oneDNN's bfloat16 convolution (which also rounds the weight to bfloat16). The input gradient comes
from the kernel the same way; the filter gradient from oneDNN's bfloat16 backward, as autocast's.
The U-Net runs channels-last under bfloat16 autocast wherever the compiled kernels are built, so
its 3x3 convolutions take this path: on a 2-core AMD EPYC model 17 (AVX-512 with bfloat16
instructions, where oneDNN's bfloat16 convolutions run near the CPU's bfloat16 peak) they took
~28% less time than oneDNN's on the small U-Net's shapes and a network evaluation ~9% less, as
F(4x4, 3x3) does a quarter of the multiplies. In training the gain is smaller (the filter
gradient, oneDNN's bfloat16 one, is as fast as float32 Winograd's there). Winograd in
bfloat16 arithmetic was not taken: with the transformed tiles rounded to bfloat16, F(4x4, 3x3)
gives ~2.5% relative error (15x a direct bfloat16 convolution's) and F(2x2, 3x3) ~0.4% (2.5x).
``LIMNER_WINOGRAD_BF16=0`` leaves bfloat16 convolutions to oneDNN.

**Measured per CPU.** The sizes and tiles above are the fixed rule. Where the kernels can take a
call (from 4x4 maps up), each part of it (forward, input gradient, filter gradient) runs by the
method, F(4x4, 3x3), F(2x2, 3x3) or oneDNN, that :mod:`limner.nn.conv_plan` measured clearly
faster than the rule's for that shape on this machine. It is timed at the shape's first call,
then read from the machine's plan file; ``LIMNER_CONV_TUNE=0`` keeps the rule.
:class:`_PlannedConv3x3` computes whatever mix a plan names; a plan with no Winograd part takes
``nn.Conv2d``'s own path.

**Reordered weights.**
On the CPU, PyTorch runs float32 convolutions through oneDNN, which computes in a blocked weight
layout (e.g. 16 output x 16 input channels per block). ``nn.Conv2d`` hands it the plain weight, so
every call starts by reordering the weight; in training that is unavoidable (the weight changes
every step), but a sampler calls the same network with the same weights tens of times. For a
small U-Net at batch 16 the reorders are ~10% of a network evaluation.

For the other convolutions, when gradients are off and the input is a float32 channels-last CPU
tensor, :class:`Conv2d` reorders its weight once (``mkldnn_reorder_conv2d_weight``)
and calls oneDNN's convolution directly with the reordered copy (``mkldnn._convolution_pointwise``).
Under CPU bfloat16 autocast every convolution the Winograd path does not take does the same
with a bfloat16 copy of the weight: autocast's own path casts the weight to bfloat16 and
oneDNN reorders it again at every call, ~10% of a bf16 network evaluation of the small U-Net,
and up to 45% of the time of a convolution over a 4x4 map.
This is what PyTorch's inductor does when it freezes a model for inference, and what Intel's
extension for PyTorch calls "prepacking"; unlike freezing, the copy is remade whenever the weight
changes (its version counter, storage or the input shape differ), so EMA swaps, optimizer steps
and ``load_state_dict`` are seen at the next call. Inference-mode weights have no version counter,
so they always take the plain path. The results of this path are the same as ``nn.Conv2d``'s
(same oneDNN kernel; bitwise under bfloat16 autocast); the tests compare them.

The two entry points are private PyTorch operators. They are looked up once; where they are
missing, or fail once, every call takes ``nn.Conv2d``'s path. ``fast = False`` (set by the
U-Net's ``fast_ops=False``) turns both fast paths off for one module; :meth:`Conv2d.train`
drops the kept tensors. Without the compiled kernels (no C compiler, ``LIMNER_KERNELS=0``) the
Winograd path is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import functional as F

from limner.nn import conv_plan, kernels
from limner.nn.conv_plan import Plan, Traced
from limner.nn.bf16 import cpu_bf16_native

__all__ = ["WINOGRAD_TILE", "Conv2d", "DerivedWeight", "cpu_kernel_setting", "prepack_available", "winograd_status"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_ops: tuple[Callable[..., Tensor], Callable[..., Tensor]] | None = None
_checked = False
_disabled_reason: str | None = None


def _find_ops() -> tuple[Callable[..., Tensor], Callable[..., Tensor]] | None:
    """(reorder, convolve) from this PyTorch build, or None when it lacks either."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        reorder = torch._C._nn.mkldnn_reorder_conv2d_weight
        convolve = torch.ops.mkldnn._convolution_pointwise.default
    except (AttributeError, RuntimeError):
        return None
    return reorder, convolve


def _get_ops() -> tuple[Callable[..., Tensor], Callable[..., Tensor]] | None:
    global _ops, _checked
    if not _checked:
        with _lock:
            if not _checked:
                _ops = _find_ops()
                _checked = True
    return None if _disabled_reason else _ops


def prepack_available() -> bool:
    """Whether :class:`Conv2d` can use reordered weights in this process."""
    return _get_ops() is not None


def _disable(error: BaseException) -> None:
    """Stop prepacking for this process after an unexpected failure (logged once)."""
    global _disabled_reason
    if _disabled_reason is None:
        _disabled_reason = f"{type(error).__name__}: {error}"
        log.warning("limner: oneDNN weight prepacking failed (%s); convolutions use the plain path",
                    _disabled_reason)


class DerivedWeight:
    """A tensor derived from a parameter (a reordered or rearranged copy), kept until the
    parameter changes; empty again when copied or pickled.

    The parameter is identified by the object itself (a weak reference), its version counter
    (bumped by every in-place change: optimizer steps, ``load_state_dict``, EMA swaps), its
    storage (``.data =`` assignments), dtype and shape, plus whatever else the caller's derived
    tensor depends on. A reordered oneDNN weight is an opaque tensor that ``copy.deepcopy`` and
    pickle cannot handle, and a copy of a module has its own parameters anyway.
    """

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: tuple[weakref.ref, tuple[Any, ...], Tensor] | None = None

    def __deepcopy__(self, memo: dict) -> "DerivedWeight":
        return DerivedWeight()

    def __reduce__(self) -> tuple[type, tuple]:
        return (DerivedWeight, ())

    def get(self, weight: Tensor, extra: tuple[Any, ...], make: Callable[[], Tensor]) -> Tensor:
        """The kept tensor if it was made from ``weight`` as it is now and the same ``extra``,
        else ``make()``, kept from now on."""
        key = (weight._version, weight.data_ptr(), weight.dtype, tuple(weight.shape), extra)
        entry = self.entry
        if entry is None or entry[0]() is not weight or entry[1] != key:
            entry = (weakref.ref(weight), key, make())
            self.entry = entry  # one assignment: a concurrent reader sees the old or the new
        return entry[2]

    def clear(self) -> None:
        self.entry = None


# Winograd pays from 8x8 maps up (2-core AVX-512 CPU, batch 32: 1.4-1.6x at 32-64 channels and
# 16x16-32x32, ~1.1x at 128 channels and 8x8); at 4x4 most of each tile's inputs are padding and
# it is ~1.4x slower than oneDNN. That is the fixed rule (the default plan); measured plans also
# time Winograd on maps from 4x4 (_PLAN_MIN_PIXELS), where another CPU may decide otherwise.
_WINOGRAD_MIN_PIXELS = 64
_PLAN_MIN_PIXELS = 16


def _winograd_setting() -> int:
    """Output tile of the Winograd path from ``LIMNER_WINOGRAD``: 4 (default), 2, or 0 (off)."""
    value = os.environ.get("LIMNER_WINOGRAD", "4").strip().lower()
    tiles = {"4": 4, "2": 2, "0": 0, "off": 0, "false": 0, "no": 0}
    if value not in tiles:
        log.warning("LIMNER_WINOGRAD=%r is not one of 4, 2, 0: using 4", value)
        return 4
    return tiles[value]


WINOGRAD_TILE = _winograd_setting()
WINOGRAD_WGRAD = os.environ.get("LIMNER_WINOGRAD_WGRAD", "1") != "0"  # F(4x4) filter gradients by Winograd
WINOGRAD_BF16 = os.environ.get("LIMNER_WINOGRAD_BF16", "1") != "0"  # Winograd under bfloat16 autocast too


def winograd_status() -> str:
    """One line for ``limner env``: which Winograd convolution CPU training and sampling use, or
    why none."""
    if not WINOGRAD_TILE:
        return "off (LIMNER_WINOGRAD=0)"
    if not kernels.available():
        return "off (no compiled kernels)"
    tile = f"F({WINOGRAD_TILE}x{WINOGRAD_TILE}, 3x3)"
    if WINOGRAD_TILE == 4:
        wgrad = "in Winograd's domain" if WINOGRAD_WGRAD else "by oneDNN (LIMNER_WINOGRAD_WGRAD=0)"
        tile = f"{tile} where H and W are multiples of 4, else F(2x2, 3x3); filter gradients of F(4x4) {wgrad}"
    bf16 = ("float32 Winograd with bfloat16 maps" if WINOGRAD_BF16
            else "oneDNN's bfloat16 convolutions (LIMNER_WINOGRAD_BF16=0)")
    return f"{tile}; under bfloat16 autocast {bf16}"


def cpu_kernel_setting(bfloat16: bool = False, plans: Mapping[str, Traced] | None = None) -> str:
    """What CPU results depend on beyond the weights and inputs, for generation records (of
    bfloat16 sampling with ``bfloat16``): ``"pytorch"`` (no compiled kernels), ``"compiled"``
    (group norm and attention kernels, no Winograd) or ``"compiled+winograd4"`` /
    ``"compiled+winograd2"``, with ``"+bf16"`` where bfloat16 sampling takes the Winograd path
    too, and ``"+plan:<digest>"`` where this machine's measured plans (``plans``, from
    :func:`conv_plan.trace` around the sampling) gave some layers' forward another method than
    the fixed rule's (the digest names which layers and methods). Each rounds differently, so a bitwise replay needs the same one."""
    if not kernels.available():
        return "pytorch"
    if not WINOGRAD_TILE:
        return "compiled"
    setting = f"compiled+winograd{WINOGRAD_TILE}" + ("+bf16" if bfloat16 and WINOGRAD_BF16 else "")
    moved = sorted(f"{key} {traced.plan.forward}" for key, traced in (plans or {}).items()
                   if traced.plan.forward != traced.default.forward)
    if moved:
        setting += "+plan:" + hashlib.sha256("\n".join(moved).encode()).hexdigest()[:8]
    return setting


def _onednn_conv(x: Tensor, weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype | None) -> Tensor:
    """The convolution nn.Conv2d computes for this call: oneDNN's, in bfloat16 for ``out_dtype``
    bfloat16 (as autocast casts x, weight and bias), else float32."""
    if out_dtype is not None:
        x, weight = x.to(out_dtype), weight.to(out_dtype)
        bias = None if bias is None else bias.to(out_dtype)
    return F.conv2d(x, weight, bias, 1, 1)


def _onednn_backward(grad: Tensor, x: Tensor, weight: Tensor, want_x: bool, want_w: bool, want_b: bool
                     ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """oneDNN's gradients of conv2d(x, weight, padding=1) in grad's dtype (x and weight cast to it,
    as autocast's convolution computed them), for the parts asked for."""
    dtype = grad.dtype
    return torch.ops.aten.convolution_backward(
        grad, x.to(dtype), weight.detach().to(dtype), [weight.shape[0]] if want_b else None, [1, 1], [1, 1], [1, 1],
        False, [0, 0], 1, [want_x, want_w, want_b])


class _PlannedConv3x3(torch.autograd.Function):
    """3x3 convolution (stride 1, padding 1) whose parts run by the methods a
    :class:`conv_plan.Plan` names: the output by the compiled Winograd kernel (F(4x4, 3x3) or
    F(2x2, 3x3)) or oneDNN; the input gradient by the same kernel with every filter rotated by
    180 degrees and the channels swapped, or oneDNN; the filter gradient from Winograd's domain
    (float32 F(4x4, 3x3)) or oneDNN's backward (in bfloat16 for a bfloat16 output, as under
    autocast), the bias gradient then with it in float32, else summed in float32. ``out_dtype``
    None: float32 throughout; bfloat16: the bfloat16 autocast variant (x float32 or bfloat16, the
    output and its gradient bfloat16). Saves x and the weight."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, out_dtype: torch.dtype | None,
                plan: Plan) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.out_dtype, ctx.plan = bias is not None, out_dtype, plan
        if tile := plan.tile("forward"):
            return kernels.winograd_conv3x3(x, kernels.winograd_filter(weight, tile=tile), bias, out_dtype)
        return _onednn_conv(x, weight, bias, out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        plan: Plan = ctx.plan
        grad = grad.contiguous(memory_format=torch.channels_last)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        wino_x = want_x and plan.tile("input_grad")
        wino_w = want_w and plan.weight_grad == conv_plan.WINOGRAD4 and ctx.out_dtype is None
        gx = gw = gb = None
        if wino_x:
            gx = kernels.winograd_conv3x3(grad, kernels.winograd_filter(weight, rotate=True, tile=wino_x),
                                          out_dtype=x.dtype)
        # float32 with oneDNN's filter gradient: the bias gradient from the same call, as nn.Conv2d's
        onednn_b = want_b and ctx.out_dtype is None and not wino_w
        if (want_x and not wino_x) or (want_w and not wino_w) or onednn_b:
            dx, dw, db = _onednn_backward(grad, x, weight, want_x and not wino_x, want_w and not wino_w, onednn_b)
            gx = gx if dx is None else dx.to(x.dtype)
            gw = None if dw is None else dw.float()
            gb = db
        if want_b and gb is None:
            gb = grad.sum(dim=(0, 2, 3), dtype=torch.float32)
        if wino_w:
            gw = kernels.winograd_weight_grad(x, grad, tile=4)
        return gx, gw, gb, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with CPU fast paths: Winograd 3x3 convolutions, and a oneDNN-reordered
    weight kept across inference calls (module docstring).

    Same constructor, parameters and state dict as ``nn.Conv2d``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = True  # runtime only, not saved
        self._packed = DerivedWeight()

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and self._winograd_eligible(x):
            out_dtype = torch.bfloat16 if torch.is_autocast_enabled("cpu") else None
            training = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
            plan = self._plan(x, out_dtype, training)
            if training and plan.uses_winograd(training):
                return _PlannedConv3x3.apply(x, self.weight, self.bias, out_dtype, plan)
            if not training and (tile := plan.tile("forward")):
                return kernels.winograd_conv3x3(x, self._winograd_filter(tile), self.bias, out_dtype)
        return self._onednn_forward(x)

    def _onednn_forward(self, x: Tensor) -> Tensor:
        """nn.Conv2d's convolution, by the reordered-weight path where it applies."""
        if self.fast and (dtype := self._prepack_dtype(x)) is not None:
            ops = _get_ops()
            if ops is not None:
                try:
                    return self._packed_forward(x.to(dtype), dtype, *ops)
                except RuntimeError as error:  # a PyTorch build whose private ops changed
                    _disable(error)
        return super().forward(x)

    def train(self, mode: bool = True) -> "Conv2d":
        """As ``nn.Module.train``; switching to training also frees the reordered weight."""
        if mode:
            self._packed.clear()
        return super().train(mode)

    def _winograd_eligible(self, x: Tensor) -> bool:
        """Whether the Winograd kernels can compute this call (a channels-last float32 map, or
        under CPU autocast a bfloat16 one with ``WINOGRAD_BF16``; shapes as
        :func:`kernels.supports_winograd` takes them) on a map large enough to be worth a plan:
        8x8 under the fixed rule, 4x4 where plans are measured."""
        if torch.is_autocast_enabled("cpu"):
            dtype_ok = WINOGRAD_BF16 and torch.get_autocast_dtype("cpu") == torch.bfloat16
        else:
            dtype_ok = x.dtype == torch.float32
        min_pixels = _PLAN_MIN_PIXELS if conv_plan.TUNE else _WINOGRAD_MIN_PIXELS
        return bool(WINOGRAD_TILE and dtype_ok and self.padding_mode == "zeros" and x.dim() == 4
                    and x.shape[-2] * x.shape[-1] >= min_pixels
                    and kernels.supports_winograd(x, self.weight, self.stride, self.padding, self.dilation,
                                                  self.groups)
                    and not torch.compiler.is_compiling())

    @staticmethod
    def _candidates(x: Tensor, bfloat16: bool, training: bool) -> dict[str, tuple[str, ...]]:
        """The methods each part of this call may take: F(4x4, 3x3) where ``LIMNER_WINOGRAD``
        allows it and H and W are multiples of 4, F(2x2, 3x3), oneDNN; for the filter gradient
        F(4x4, 3x3) (float32, ``WINOGRAD_WGRAD``) or oneDNN."""
        four = WINOGRAD_TILE == 4 and x.shape[-2] % 4 == 0 and x.shape[-1] % 4 == 0
        tiles = ((conv_plan.WINOGRAD4,) if four else ()) + (conv_plan.WINOGRAD2, conv_plan.ONEDNN)
        if not training:
            return {"forward": tiles}
        wgrad = ((conv_plan.WINOGRAD4,) if four and WINOGRAD_WGRAD and not bfloat16 else ()) + (conv_plan.ONEDNN,)
        return {"forward": tiles, "input_grad": tiles, "weight_grad": wgrad}

    @staticmethod
    def _default_plan(x: Tensor, candidates: dict[str, tuple[str, ...]]) -> Plan:
        """The fixed rule (the plan without measuring): from 8x8 maps up, the first candidate of
        each part (F(4x4, 3x3) where it applies); oneDNN below."""
        if x.shape[-2] * x.shape[-1] < _WINOGRAD_MIN_PIXELS:
            return Plan()
        return Plan(**{part: methods[0] for part, methods in candidates.items()})

    def _plan(self, x: Tensor, out_dtype: torch.dtype | None, training: bool) -> Plan:
        """The method of each part of this call (:mod:`limner.nn.conv_plan`): measured on this
        CPU the first time a shape is seen, then kept; the fixed rule where measuring is off."""
        N, C, H, W = x.shape
        candidates = self._candidates(x, out_dtype is not None, training)
        key = conv_plan.plan_key(training, out_dtype is not None, N, C, H, W, self.out_channels,
                                 self.bias is not None, candidates)
        return conv_plan.choose(key, self._default_plan(x, candidates),
                                lambda: self._measure(x, out_dtype, training, candidates))

    def _measure(self, x: Tensor, out_dtype: torch.dtype | None, training: bool,
                 candidates: dict[str, tuple[str, ...]]) -> dict[str, dict[str, float]]:
        """Best ms of every candidate method per part of this call, on scratch tensors of its
        shape (batch rounded up as in the plan's key) from a private generator. In training the
        filter transforms count (the weight changes every step); in inference they are kept."""
        gen = torch.Generator().manual_seed(0)
        N, C, H, W = x.shape
        n = conv_plan.rounded_batch(N)
        cl = torch.channels_last
        xs = torch.randn(n, C, H, W, generator=gen).to(x.dtype).contiguous(memory_format=cl)
        w = self.weight.detach()
        b = None if self.bias is None else self.bias.detach()
        tile = conv_plan.TILES

        def forward(method: str) -> Callable[[], Any]:
            if method == conv_plan.ONEDNN:
                return (lambda: _onednn_conv(xs, w, b, out_dtype)) if training else (lambda: self._onednn_forward(xs))
            if training:
                return lambda: kernels.winograd_conv3x3(xs, kernels.winograd_filter(w, tile=tile[method]), b, out_dtype)
            U = kernels.winograd_filter(w, tile=tile[method])
            return lambda: kernels.winograd_conv3x3(xs, U, b, out_dtype)

        with torch.no_grad():
            parts: dict[str, dict[str, Callable[[], Any]]] = {"forward": {m: forward(m) for m in candidates["forward"]}}
            if training:
                g = torch.randn(n, self.out_channels, H, W, generator=gen).to(out_dtype or torch.float32)
                g = g.contiguous(memory_format=cl)
                parts["input_grad"] = {
                    m: (lambda m=m: kernels.winograd_conv3x3(
                        g, kernels.winograd_filter(w, rotate=True, tile=tile[m]), out_dtype=xs.dtype))
                    if m != conv_plan.ONEDNN else (lambda: _onednn_backward(g, xs, w, True, False, False))
                    for m in candidates["input_grad"]}
                if len(candidates["weight_grad"]) > 1:
                    parts["weight_grad"] = {conv_plan.WINOGRAD4: lambda: kernels.winograd_weight_grad(xs, g, tile=4),
                                            conv_plan.ONEDNN: lambda: _onednn_backward(g, xs, w, False, True, False)}
            return conv_plan.time_parts(parts)

    def _winograd_filter(self, tile: int) -> Tensor:
        """The transformed filters, kept while the weight is unchanged (as the reordered weight)."""
        w = self.weight
        if w.is_inference():  # no version counter to tell a change
            return kernels.winograd_filter(w, tile=tile)
        return self._packed.get(w, ("winograd", tile), lambda: kernels.winograd_filter(w, tile=tile))

    def _prepack_dtype(self, x: Tensor) -> torch.dtype | None:
        """The dtype the reordered-weight path computes in for this call: float32, or bfloat16
        under CPU bfloat16 autocast (the dtype autocast would give the convolution); None where
        the path does not apply."""
        w = self.weight
        if not (not torch.is_grad_enabled() and x.device.type == "cpu"
                and w.dtype == torch.float32 and w.device.type == "cpu" and x.dim() == 4
                and not w.is_inference() and x.shape[0] > 0 and self.padding_mode == "zeros"
                and not isinstance(self.padding, str)
                and x.is_contiguous(memory_format=torch.channels_last)
                and not torch.compiler.is_compiling()):
            return None
        if not torch.is_autocast_enabled("cpu"):
            return torch.float32 if x.dtype == torch.float32 else None
        if (torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
                and cpu_bf16_native()):  # oneDNN refuses to reorder bfloat16 weights without it
            return torch.bfloat16
        return None

    def _packed_forward(self, x: Tensor, dtype: torch.dtype, reorder: Callable[..., Tensor],
                        convolve: Callable[..., Tensor]) -> Tensor:
        w = self.weight
        geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        packed = self._packed.get(w, (tuple(x.shape), dtype),
                                  lambda: reorder(w.detach().to(dtype).to_mkldnn(), *geometry, list(x.shape)))
        bias = None if self.bias is None else self.bias.detach().to(dtype)
        return convolve(x, packed, bias, *geometry, "none", [], "")
