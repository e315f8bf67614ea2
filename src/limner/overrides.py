"""Typed ``KEY=VALUE`` overrides of a run's resolved config (``limner train --set``).

A key is a dotted path into the sections of ``config.json`` a user may choose before training:
``train.ema_decay=0.9999`` sets a :class:`~limner.training.config.TrainConfig` field and
``family.P_mean=-0.8`` or ``family.unet.dropout=0.1`` a field of the family's config, at any
depth. Values are JSON (``0.1``, ``true``, ``null``, ``[0.9, 0.99]``); anything that is not JSON
is taken as a string, so ``family.sampler=heun`` needs no quotes.

Each override is checked against the value it replaces, so a typo or a wrong type is an error
naming the key, never a silently ignored setting (the idea of Hydra's / OmegaConf's structured
configs; this is a small stand-alone implementation): an unknown key lists the known ones, an int
field refuses 0.5, a float field takes 1 as 1.0, a bool field takes only true/false, a sub-config
cannot be replaced by a scalar. A family may also name fields that follow from the data or from
another option (``Family.fixed_settings``), which ``--set`` refuses with the option to use instead.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from limner.errors import UsageError

SECTIONS = ("train", "family")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)``; raises ValueError with a readable message."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE (e.g. train.ema_decay=0.9999), got {text!r}")
    if not _KEY.match(key):
        raise ValueError(f"{key!r} is not a dotted setting name (e.g. family.unet.dropout)")
    section = key.split(".", 1)[0]
    if section not in SECTIONS or "." not in key:
        raise ValueError(f"{key!r} must start with train. or family. (e.g. train.ema_decay, family.P_mean)")
    return key, parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    """JSON when it parses (numbers, true/false/null, lists, quoted strings), else the text itself."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    return value


def split_sections(assignments: list[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group parsed assignments by section and nest their dotted paths:
    ``[("family.unet.dropout", 0.1)]`` -> ``{"train": {}, "family": {"unet": {"dropout": 0.1}}}``.
    A key given twice, or together with a key inside it, is an error."""
    out: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    seen: list[str] = []
    for key, value in assignments:
        for other in seen:
            if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                what = "more than once" if key == other else f"together with --set {other}"
                raise UsageError(f"--set {key}: given {what}")
        seen.append(key)
        section, *path = key.split(".")
        node = out[section]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def merge_overrides(
    base: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    where: str,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A copy of ``base`` with ``overrides`` (nested dicts) applied, each checked against the value
    it replaces. ``where`` prefixes the key in error messages (``"family"``); ``fixed`` maps
    dotted paths (relative to ``base``) that may not be overridden to the reason/option to use."""
    fixed = fixed or {}
    out = dict(base)
    for name, value in overrides.items():
        path = f"{where}.{name}"
        if name in fixed:
            raise UsageError(f"--set {path}: not settable ({fixed[name]})")
        if name not in base:
            known = ", ".join(sorted(base)) or "none"
            raise UsageError(f"--set {path}: unknown setting {name!r} (known in {where}: {known})")
        current = base[name]
        if isinstance(value, dict):
            if not isinstance(current, Mapping):
                raise UsageError(f"--set {path}: is a single value, not a group of settings")
            nested_fixed = {k.split(".", 1)[1]: v for k, v in fixed.items() if k.startswith(f"{name}.")}
            out[name] = merge_overrides(current, value, where=path, fixed=nested_fixed)
        else:
            out[name] = coerce(value, current, path)
    return out


def coerce(value: Any, current: Any, path: str) -> Any:
    """``value`` converted to the type of ``current`` (the setting it replaces), or UsageError.
    ``current is None`` (an optional setting left unset) accepts any JSON scalar or list;
    ``null`` unsets an optional setting, whose own validation decides if that is allowed."""
    if value is None or current is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise UsageError(f"--set {path}: expected true or false, got {value!r}")
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"--set {path}: expected an integer, got {value!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise UsageError(f"--set {path}: expected an integer, got {value!r}")
            value = int(value)
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"--set {path}: expected a number, got {value!r}")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise UsageError(f"--set {path}: expected text, got {value!r}")
        return value
    if isinstance(current, (list, tuple)):
        if not isinstance(value, list):
            raise UsageError(f"--set {path}: expected a list like [1, 2], got {value!r}")
        return value
    if isinstance(current, Mapping):
        raise UsageError(f"--set {path}: is a group of settings; set its fields ({path}.NAME=...)")
    return value
