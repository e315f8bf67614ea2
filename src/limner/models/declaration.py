"""What a family offers, declared as data that every front end reads.

A family class carries a :class:`FamilyDeclaration`: the generation options it accepts (name,
type, default, choices, range, help), the other runs it is built on (latent diffusion on a VAE
run, the token families on a VQ-VAE run) and its capabilities (reconstruct, interpolate,
inpaint, ...). The CLI builds ``--sampler``, ``--steps``, ``--temperature``... and ``--vae`` /
``--vq`` from these declarations, the studio's model listing serialises them (``to_json``), and
the generation pipeline checks a request against the loaded family's declaration, so no front end
tests a family's name. A failed check is a :class:`limner.errors.UsageError` whose ``field`` is
the option's name (the CLI prints ``--steps``, an HTTP API answers 422 naming ``steps``).

This module imports neither torch nor any family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Mapping

from limner.errors import UsageError

# Options a generation request carries as its own fields (older records hold them there); every
# other declared option travels in the request's ``options`` dict.
REQUEST_FIELDS = ("sampler", "steps", "cfg", "truncation", "sigma_max")


class Capability(str, Enum):
    """Things a family can do besides sampling from a request."""

    negative_prompt = "negative_prompt"  # guidance steers away from a negative prompt
    interpolate = "interpolate"  # ``limner interpolate`` (seed and condition walks)
    reconstruct = "reconstruct"  # encode and decode an image (``limner reconstruct``)
    img2img = "img2img"  # start from an init image with a strength
    inpaint = "inpaint"  # regenerate the masked part of an image


@dataclass(frozen=True)
class OptionSpec:
    """One generation option a family accepts and checks.

    Attributes:
        name: the request field (``steps``, ``top_k``); the CLI flag is ``--top-k``.
        type: ``int``, ``float`` or ``str``.
        help: one line for ``--help`` and the studio's form.
        default: the value used when the request leaves it out; None = the run's own (its
            config's, shown by the record).
        choices: the allowed values (``str`` options), or None.
        min, max: the allowed range (numbers); ``min_open`` / ``max_open`` exclude the bound.
    """

    name: str
    type: type
    help: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def check(self, value: Any) -> Any:
        """``value`` converted to the option's type; a UsageError naming the option otherwise."""
        try:
            if self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
                if not math.isfinite(value):
                    raise UsageError(f"must be a finite number, got {value!r}", field=self.name)
            else:
                value = self.type(value)
        except (TypeError, ValueError):
            raise UsageError(f"expected {_type_word(self.type)}, got {value!r}", field=self.name) from None
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"must be one of {', '.join(map(str, self.choices))}, got {value!r}",
                             field=self.name)
        low_bad = self.min is not None and (value <= self.min if self.min_open else value < self.min)
        high_bad = self.max is not None and (value >= self.max if self.max_open else value > self.max)
        if low_bad or high_bad:
            raise UsageError(f"must be {self.range_text()}, got {value!r}", field=self.name)
        return value

    def range_text(self) -> str:
        """``in [0, 1]``, ``>= 1``, ``> 0`` ... (empty when unbounded)."""
        lo = None if self.min is None else ("(" if self.min_open else "[") + _num(self.min)
        hi = None if self.max is None else _num(self.max) + (")" if self.max_open else "]")
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>' if self.min_open else '>='} {_num(self.min)}"
        if hi:
            return f"{'<' if self.max_open else '<='} {_num(self.max)}"
        return "any value"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type.__name__, "help": self.help,
                "default": self.default, "choices": list(self.choices) if self.choices else None,
                "min": self.min, "max": self.max, "min_open": self.min_open, "max_open": self.max_open}


@dataclass(frozen=True)
class RunNeed:
    """Another run a family is built on, given at ``limner train`` as ``--OPTION RUN_DIR``.

    Attributes:
        option: the train option and ``create()`` keyword (``vae``, ``vq``).
        family: the family that run must be.
        help: one line for ``--help``.
        train_args: the ``limner train`` arguments that make a suitable run; ``{size}`` stands
            for a preset size (tiny, small, base), e.g. ``--preset vq-{size}``.
        provenance: the family config key where the new run records that run (``path``,
            run id, step, model hash); resume compares ``--OPTION`` with it.
    """

    option: str
    family: str
    help: str
    train_args: tuple[str, ...] = ()
    provenance: str = ""

    def suggested_args(self, size: str = "small") -> list[str]:
        """``limner train`` arguments that make a suitable run at preset size ``size``."""
        return ["--family", self.family, *(a.format(size=size) for a in self.train_args)]

    def to_json(self) -> dict[str, Any]:
        return {"option": self.option, "family": self.family, "help": self.help,
                "train_args": self.suggested_args()}


@dataclass(frozen=True)
class FamilyDeclaration:
    """What a family offers (see the module docstring).

    Attributes:
        summary: one line naming the method and its paper.
        options: the generation options it accepts, in display order.
        needs: other runs it is built on.
        capabilities: what it can do besides plain sampling.
        presets: the ``--preset`` names it takes, each with one line saying what it is.
    """

    summary: str
    options: tuple[OptionSpec, ...] = ()
    needs: tuple[RunNeed, ...] = ()
    capabilities: frozenset[Capability] = field(default_factory=frozenset)
    presets: tuple[tuple[str, str], ...] = ()

    def option(self, name: str) -> OptionSpec | None:
        return next((o for o in self.options if o.name == name), None)

    def supports(self, capability: Capability | str) -> bool:
        return Capability(capability) in self.capabilities

    def check_options(self, values: Mapping[str, Any], *, family: str) -> dict[str, Any]:
        """Each given (non-None) option checked and converted; an option this family does not
        declare is a UsageError naming it and the options it does take."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            spec = self.option(name)
            if spec is None:
                takes = ", ".join(o.name for o in self.options) or "none"
                raise UsageError(f"a {family} run takes no {name} option (its options: {takes})",
                                 field=name)
            out[name] = spec.check(value)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "options": [o.to_json() for o in self.options],
                "needs": [n.to_json() for n in self.needs],
                "capabilities": sorted(c.value for c in self.capabilities),
                "presets": [{"name": n, "description": d} for n, d in self.presets]}


def preset_lines(presets: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(name, description) of a family's preset table (values with a ``description``)."""
    return tuple((name, getattr(p, "description", "")) for name, p in presets.items())


def request_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Option values by name as ``GenerationRequest`` keywords: its own fields (``steps``...)
    plus ``options`` holding the rest (``temperature``...)."""
    own = {k: v for k, v in values.items() if k in REQUEST_FIELDS}
    return {**own, "options": {k: v for k, v in values.items() if k not in REQUEST_FIELDS}}


def merged_options(declarations: Iterable[tuple[str, FamilyDeclaration]]) -> dict[str, list[tuple[str, OptionSpec]]]:
    """Option name -> [(family, spec)] over several families, in first-declared order (what a
    CLI that does not know the run's family yet offers)."""
    out: dict[str, list[tuple[str, OptionSpec]]] = {}
    for family, decl in declarations:
        for spec in decl.options:
            out.setdefault(spec.name, []).append((family, spec))
    return out


def _type_word(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string"}.get(t, t.__name__)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
