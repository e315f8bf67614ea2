"""limner.explain: "how it learns", the views of a user's own model.

Each view reads a run folder (weights, metrics, data) and returns an :class:`ExplainResult`:
JSON-able ``data``, ``images`` and ``animations``, written by ``result.write(out_dir)``.

Entry points (the CLI ``limner explain RUN VIEW``, the studio's
``/api/runs/{name}/explain/{view}`` and the live training callback all use these)::

    from limner.explain import VIEWS, compute_view
    result = compute_view("runs/mine", "timeline", count=8)
    result.write("explain-out/")
    print(VIEWS["step"].params)        # each option of a view, with its help text

Views: ``timeline``, ``step``, ``features``, ``filmstrip``, ``dynamics``, ``attention``; every
view also takes ``device``, ``data`` (the training data folder if it moved) and ``cache_dir``.
Per-family behaviour goes through :class:`limner.explain.hooks.FamilyHooks` (the token
transformers' readouts, hidden states on the token grid and their self-attention, are in
``limner.explain.tokens`` and ``limner.explain.token_dynamics``).
"""

from limner.explain.base import VIEWS, ExplainResult, ExplainRun, View, compute_view, register_view
from limner.explain.base import _load_views as _load

_load()

__all__ = ["VIEWS", "ExplainResult", "ExplainRun", "View", "compute_view", "register_view"]
