"""Live capture during training: as each checkpoint lands, the timeline and the family's
dynamics in ``RUN/explain/`` are brought up to date.

``ExplainCallback`` samples the run's fixed seeds with the EMA weights (the frame of the
timeline), then redraws ``RUN/explain/timeline.png|gif``, ``compare.png`` and the dynamics
view from files and the in-memory data. It never changes training: every RNG is restored, and a
failure is reported once as a warning and capture stops. ``limner train --no-explain`` turns it
off; ``benchmarks/explain_live_overhead.py`` measures its cost.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from limner.training.callbacks import Callback, SampleGridCallback, default_sample_requests

if TYPE_CHECKING:
    from limner.training.trainer import Trainer

LIVE_FRAME_COUNT = 8


class ExplainCallback(Callback):
    """Writes ``RUN/explain/`` at every checkpoint (see the module docstring).

    Args:
        count: images per timeline frame (the first ``count`` of the sample grid's seeds and
            conditions, or the run's defaults when grids are off).
        dynamics: also refresh the family's dynamics view.
    """

    main_only = True

    def __init__(self, count: int = LIVE_FRAME_COUNT, dynamics: bool = True):
        self.count = count
        self.with_dynamics = dynamics
        self.requests: list[Any] | None = None
        self.failed = False
        self.seconds = 0.0  # time spent here, for the overhead benchmark

    def on_train_start(self, trainer: "Trainer") -> None:
        from limner.explain.timeline import _first, read_requests, write_requests

        saved = read_requests(trainer.run_dir)
        if saved is not None:
            self.requests = saved[0]
            return
        grids = trainer.callback_of_type(SampleGridCallback)
        if grids is not None:
            requests = grids.requests(trainer) if callable(grids.requests) else list(grids.requests)
            names = grids.labels
        else:
            requests, names = default_sample_requests(trainer.data, self.count, trainer.config.seed)
        self.requests = _first(list(requests), self.count)
        write_requests(trainer.run_dir, self.requests, names[: self.count] if names else None)

    def on_save(self, trainer: "Trainer", path) -> None:
        if self.failed or self.requests is None:
            return
        start = time.perf_counter()
        try:
            self.capture(trainer)
        except Exception as e:  # noqa: BLE001 - explaining must never stop training
            self.failed = True
            warnings.warn(f"explain: live capture stopped at step {trainer.step}: {e}", RuntimeWarning)
        spent = time.perf_counter() - start
        self.seconds += spent
        if not self.failed:
            self._write_status(trainer, spent)

    def _write_status(self, trainer: "Trainer", spent: float) -> None:
        """``RUN/explain/live.json``: when the views were last refreshed and what that cost."""
        import json

        from limner.explain.base import EXPLAIN_DIR
        from limner.fsutil import atomic_write

        text = json.dumps({"step": trainer.step, "seconds": round(spent, 3),
                           "total_seconds": round(self.seconds, 3), "time": time.time()})
        atomic_write(trainer.run_dir / EXPLAIN_DIR / "live.json", lambda f: f.write(text.encode()),
                     fsync=False)

    def capture(self, trainer: "Trainer") -> None:
        """The frame for this step, then the timeline and dynamics views from it."""
        from limner.explain.base import EXPLAIN_DIR, ExplainRun, compute_view
        from limner.explain.timeline import generate_frame, write_frame
        from limner.training.rng import preserved_rng

        with trainer.sampling_weights():
            images = generate_frame(trainer.family, self.requests)
        write_frame(trainer.run_dir, trainer.step, images)
        out = trainer.run_dir / EXPLAIN_DIR
        with preserved_rng(trainer.generator):
            run = ExplainRun(trainer.run_dir, device=str(trainer.device), dataset=trainer.data)
            compute_view(run, "timeline", generate_missing=False).write(out)
            if self.with_dynamics:
                result = compute_view(run, "dynamics", live=True)
                result.write(out)
