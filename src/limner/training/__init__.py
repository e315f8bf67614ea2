"""limner.training: the family-agnostic trainer, checkpoints, EMA and distributed training.

Modules: ``config`` (TrainConfig), ``trainer`` (Trainer, TrainResult), ``context`` (the
StepContext a family step receives), ``data_order`` (resumable batching), ``optim`` (AdamW and
LR warm-up), ``ema``, ``checkpoint`` (atomic run-folder checkpoints and loaders),
``safe_load`` (format detection, weights_only loading), ``rng``, ``signals`` (graceful stop),
``distributed`` (torchrun/DDP) and ``callbacks`` (logging, progress, saving, sample grids).
"""

from limner.torchcheck import require_torch

require_torch()  # before any torch-using module below
from limner.training.callbacks import (
    Callback,
    CheckpointSaver,
    MetricsLogger,
    ProgressBar,
    SampleGridCallback,
    TensorBoardLogger,
)
from limner.training.checkpoint import (
    CheckpointWarning,
    checkpoint_dirs,
    find_latest_valid,
    load_module_weights,
    model_hash,
    read_run_config,
)
from limner.training.config import TrainConfig
from limner.training.data_order import TrainData
from limner.training.ema import EMA
from limner.training.safe_load import load_state
from limner.training.signals import TrainingInterrupted
from limner.training.trainer import Trainer, TrainResult

__all__ = [
    "Callback", "CheckpointSaver", "CheckpointWarning", "EMA", "MetricsLogger", "ProgressBar",
    "SampleGridCallback", "TensorBoardLogger", "TrainConfig", "TrainData", "TrainResult",
    "Trainer", "TrainingInterrupted", "checkpoint_dirs", "find_latest_valid",
    "load_module_weights", "load_state", "model_hash", "read_run_config",
]
