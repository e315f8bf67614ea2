"""Graceful stops: SIGINT, SIGTERM and SIGUSR1 finish the current step, save, and exit.

The handler only records the request; the trainer checks it between steps (all ranks agree
through an all-reduce), writes a checkpoint atomically and raises ``TrainingInterrupted``. A
second SIGINT while stopping raises ``KeyboardInterrupt`` at once (the atomic writer leaves the
previous checkpoint intact). The CLI maps the signal to exit code 128 + signum (130, 143).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Iterator

from limner.errors import LimnerError

STOP_SIGNALS: tuple[int, ...] = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s is not None
)


class TrainingInterrupted(LimnerError):
    """Training stopped on request after saving a checkpoint.

    Attributes:
        signum: the signal that asked to stop (None for ``Trainer.request_stop()``).
        checkpoint: the checkpoint written at ``step``.
        step: steps completed.
    """

    def __init__(self, signum: int | None, checkpoint: Path | None, step: int):
        name = signal.Signals(signum).name if signum is not None else "a stop request"
        super().__init__(f"training stopped by {name} at step {step}; "
                         f"checkpoint saved to {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint
        self.step = step

    @property
    def exit_code(self) -> int:
        """Shell convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + (self.signum if self.signum is not None else signal.SIGINT)


class StopFlag:
    """The pending stop request (a signal number, 0 for a programmatic stop)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def request(self, signum: int = 0) -> None:
        """Ask to stop after the current step."""
        if self.signum is None:
            self.signum = signum

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: the first signal records, a repeated SIGINT aborts at once."""
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signum)


@contextmanager
def stop_signals(flag: StopFlag) -> Iterator[None]:
    """Route the stop signals to ``flag`` for the block (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, flag.handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
