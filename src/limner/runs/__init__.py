"""limner.runs: the run folder, read without torch (layout, config, manifests, newest valid
checkpoint, metrics, sample grids). Training writes run folders; generation, evaluation, the
store and the studio read them through here, so none of them imports another for it."""

from __future__ import annotations

from limner.runs.info import (is_run_folder, list_runs, newest_checkpoint_step, read_metrics, run_summary,
                              sample_grids)
from limner.runs.layout import (CONFIG_FILE, LATEST_FILE, MANIFEST_FILE, METRICS_FILE, SAMPLES_DIR,
                                STATE_FILE, CheckpointWarning, checkpoint_dirs, checkpoint_root,
                                checkpoint_step, find_latest_valid, model_hash, read_manifest,
                                read_run_config, step_dir_name, verify_checkpoint)

__all__ = ["CONFIG_FILE", "LATEST_FILE", "MANIFEST_FILE", "METRICS_FILE", "SAMPLES_DIR", "STATE_FILE",
           "CheckpointWarning", "checkpoint_dirs", "checkpoint_root", "checkpoint_step", "find_latest_valid",
           "model_hash", "read_manifest", "read_run_config", "step_dir_name", "verify_checkpoint",
           "is_run_folder", "list_runs", "newest_checkpoint_step", "read_metrics", "run_summary", "sample_grids"]
