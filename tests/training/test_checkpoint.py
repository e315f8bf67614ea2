"""Checkpoints: layout, manifest, atomic writes under faults, corruption fallback, retention,
strict weight loading and own-state safety (RELIABILITY.md B.25-B.30, C.39-C.41)."""

from __future__ import annotations

import errno
import json
import os
import random
import warnings
from pathlib import Path

import pytest
import torch

from limner.errors import CheckpointError, UsageError
from limner.training import checkpoint as ck
from limner.training.checkpoint import (
    CheckpointWarning,
    checkpoint_dirs,
    find_latest_valid,
    load_module_weights,
    model_hash,
    read_run_config,
    verify_checkpoint,
    write_checkpoint,
)
from limner.training.safe_load import safetensors_metadata

from .toy_family import ToyDenoiser, make_trainer


@pytest.fixture
def trained(tmp_path):
    """A run with checkpoints at steps 4, 8 and 12."""
    trainer = make_trainer(tmp_path, steps=12, save_every=4)
    trainer.fit()
    return tmp_path, trainer


def _write(run_dir: Path, step: int, keep_last: int | None = None, value: float = 1.0) -> Path:
    net = ToyDenoiser()
    with torch.no_grad():
        net.conv1.weight.fill_(value)
    return write_checkpoint(run_dir, step, {"model": net.state_dict()}, {"step": step},
                            keep_last=keep_last)


def test_layout_and_manifest(trained):
    run_dir, trainer = trained
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_000004", "step_000008", "step_000012"]
    ckpt = run_dir / "checkpoints" / "step_000012"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000012"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "model_ema.safetensors",
                                                "state.pt", "manifest.json"}
    manifest = verify_checkpoint(ckpt)
    assert manifest["step"] == 12 and manifest["format"] == ck.CHECKPOINT_FORMAT
    assert set(manifest["files"]) == {"model.safetensors", "model_ema.safetensors", "state.pt"}
    assert json.loads(safetensors_metadata(ckpt / "model.safetensors")["limner"])["step"] == 12
    config = read_run_config(run_dir)
    assert config["train"]["steps"] == 12 and "limner_version" in config
    assert find_latest_valid(run_dir) == ckpt


def test_own_checkpoints_are_weights_only_safe(trained):
    run_dir, _ = trained
    state_path = run_dir / "checkpoints" / "step_000012" / "state.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(state_path)) == []
    state = torch.load(state_path, weights_only=True)
    for key in ("optimizers", "schedulers", "ema", "rng", "data_order", "family", "step"):
        assert key in state
    assert state["ema"]["updates"] == 12 and state["step"] == 12
    assert isinstance(state["rng"][0]["step_generator"], torch.Tensor)


def test_state_with_objects_is_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\.family\.obj"):
        write_checkpoint(tmp_path, 1, {}, {"family": {"obj": object()}})
    assert checkpoint_dirs(tmp_path) == []


def test_non_finite_weights_are_never_saved(tmp_path):
    _write(tmp_path, 1)
    net = ToyDenoiser()
    with torch.no_grad():
        net.conv2.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite.*conv2.bias"):
        write_checkpoint(tmp_path, 2, {"model": net.state_dict()}, {"step": 2})
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000001"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_identical_weights_give_identical_files_and_hashes(tmp_path):
    # safetensors writes a metadata dict in hash-map order, which varies from save to save: the
    # checkpoint keeps one sorted-JSON key so identical weights give identical bytes (and model
    # hashes in generation records).
    net = ToyDenoiser()
    digests = set()
    for i in range(8):
        ckpt = write_checkpoint(tmp_path / f"r{i}", 3, {"model": net.state_dict()}, {"step": 3})
        manifest = json.loads((ckpt / "manifest.json").read_text())
        digests.add(manifest["files"]["model.safetensors"]["sha256"])
    assert len(digests) == 1


@pytest.mark.parametrize("target", ["os.replace", "save_file", "torch.save"])
def test_failed_write_keeps_previous_and_deletes_nothing(tmp_path, monkeypatch, target):
    _write(tmp_path, 1, keep_last=1)
    before = (tmp_path / "checkpoints" / "step_000001" / "model.safetensors").read_bytes()

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if target == "os.replace":
        monkeypatch.setattr(ck.os, "replace", enospc)
    elif target == "save_file":
        monkeypatch.setattr("safetensors.torch.save_file", enospc)
    else:
        monkeypatch.setattr(ck.torch, "save", enospc)
    with pytest.raises(CheckpointError, match="No space left"):
        _write(tmp_path, 2, keep_last=1)
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000001"]  # retention deleted nothing
    assert not (root / "step_000002").exists()
    assert not list(root.glob(".tmp-*"))
    assert (root / "latest").read_text().strip() == "step_000001"
    verify_checkpoint(root / "step_000001")
    assert (root / "step_000001" / "model.safetensors").read_bytes() == before


def test_failed_pointer_update_still_leaves_a_valid_checkpoint(tmp_path, monkeypatch):
    _write(tmp_path, 1)
    real = os.replace

    def fail_on_latest(src, dst):
        if Path(dst).name == "latest":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(ck.os, "replace", fail_on_latest)
    with pytest.raises(CheckpointError):
        _write(tmp_path, 2)
    monkeypatch.undo()
    # the directory was committed before the pointer: it is complete and the newest valid one
    assert find_latest_valid(tmp_path).name == "step_000002"


def test_trainer_save_failure_is_a_clear_error(tmp_path, monkeypatch):
    """The disk fills up under the second save: the real checkpoint code turns the OSError into
    a CheckpointError naming the checkpoint and the cause, and the first one stays the newest."""
    import safetensors.torch

    trainer = make_trainer(tmp_path, steps=8, save_every=4)
    real = safetensors.torch.save_file

    def disk_full_at_step_8(*args, **kwargs):
        if trainer.step == 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_at_step_8)
    with pytest.raises(CheckpointError) as info:
        trainer.fit()
    message = str(info.value)
    assert "step_000008" in message and "No space left on device" in message, message
    assert "previous checkpoint is kept" in message
    assert find_latest_valid(tmp_path).name == "step_000004"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.9])
def test_sigkill_during_saves_leaves_only_valid_checkpoints(tmp_path, delay):
    """A writer killed at an arbitrary byte: every committed directory verifies, the newest
    valid one is found without warnings, and the next start removes the temp leftovers."""
    import signal
    import subprocess
    import sys
    import time

    script = Path(__file__).with_name("kill_script.py")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "checkpoints" / "latest").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        newest = find_latest_valid(tmp_path)
    assert newest is not None
    for path in checkpoint_dirs(tmp_path):
        verify_checkpoint(path)
    ck.remove_stale_tmp(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_leftover_tmp_dirs_are_removed_on_next_start(trained):
    run_dir, _ = trained
    root = run_dir / "checkpoints"
    leftover = root / ".tmp-step_000016-99999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    (root / ".latest.tmp-99999").write_text("step_0000")
    (root / ".old-step_000002-99999").mkdir()
    make_trainer(run_dir, steps=16, resume=True)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000004", "step_000008",
                                                      "step_000012"]


def test_retention_keeps_the_newest(tmp_path):
    for step in range(1, 6):
        _write(tmp_path, step, keep_last=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000004", "step_000005"]


def test_retention_in_a_run_and_across_resume(tmp_path):
    make_trainer(tmp_path, steps=12, save_every=2, keep_last=2).fit()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000010", "step_000012"]
    make_trainer(tmp_path, steps=16, save_every=2, keep_last=2, resume=True).fit()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000014", "step_000016"]


def _corrupt(path: Path, how: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: rng.randrange(len(data))]))
    else:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
@pytest.mark.parametrize("name", ["model.safetensors", "model_ema.safetensors", "state.pt"])
def test_corrupt_newest_falls_back_with_a_warning(trained, how, name):
    run_dir, _ = trained
    newest = run_dir / "checkpoints" / "step_000012"
    _corrupt(newest / name, how, random.Random(f"{how}{name}"))
    with pytest.raises(CheckpointError, match="step_000012 is (incomplete|corrupt)"):
        verify_checkpoint(newest)
    with pytest.warns(CheckpointWarning, match="using .*step_000008"):
        assert find_latest_valid(run_dir).name == "step_000008"


def test_missing_manifest_or_file_is_incomplete(trained):
    run_dir, _ = trained
    (run_dir / "checkpoints" / "step_000012" / "manifest.json").unlink()
    (run_dir / "checkpoints" / "step_000008" / "state.pt").unlink()
    with pytest.warns(CheckpointWarning, match="incomplete"):
        assert find_latest_valid(run_dir).name == "step_000004"


def test_no_valid_checkpoint_left(trained):
    run_dir, _ = trained
    for path in checkpoint_dirs(run_dir):
        (path / "manifest.json").write_text("{not json")
    with pytest.warns(CheckpointWarning, match="no valid checkpoint"):
        assert find_latest_valid(run_dir) is None


def test_resume_uses_the_newest_valid_and_moves_the_corrupt_one_aside(trained):
    run_dir, _ = trained
    _corrupt(run_dir / "checkpoints" / "step_000012" / "state.pt", "bitflip", random.Random(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(run_dir, steps=12, resume=True)
    assert any(issubclass(w.category, CheckpointWarning) for w in caught)
    assert trainer.step == 8
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_000004", "step_000008"]
    assert list((run_dir / "checkpoints").glob(".corrupt-step_000012-*"))
    trainer.fit()
    assert find_latest_valid(run_dir).name == "step_000012"


def test_newer_format_is_refused(trained):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "step_000012"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["format"] = ck.CHECKPOINT_FORMAT + 1
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="upgrade limner"):
        verify_checkpoint(ckpt)


def test_load_module_weights_is_strict(trained):
    run_dir, _ = trained
    path = run_dir / "checkpoints" / "step_000012" / "model.safetensors"
    load_module_weights(ToyDenoiser(), path)
    with pytest.raises(CheckpointError, match=r"shape of conv1.weight: file \(4, 3, 3, 3\) vs model"):
        load_module_weights(ToyDenoiser(width=5), path)
    with pytest.raises(CheckpointError, match="unexpected conv2.weight"):
        load_module_weights(torch.nn.Sequential(), path)

    class Bigger(ToyDenoiser):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(CheckpointError, match="missing extra.weight"):
        load_module_weights(Bigger(), path)


def test_load_module_weights_refuses_nan(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in ToyDenoiser().state_dict().items()}
    sd["conv1.bias"][1] = float("inf")
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="conv1.bias contains NaN/Inf"):
        load_module_weights(ToyDenoiser(), tmp_path / "w.safetensors")


def test_model_hash_is_short_stable_and_weight_specific(trained):
    run_dir, _ = trained
    a = model_hash(run_dir / "checkpoints" / "step_000012", ["model_ema"])
    assert len(a) == 12 and a == model_hash(run_dir / "checkpoints" / "step_000012", ["model_ema"])
    assert a != model_hash(run_dir / "checkpoints" / "step_000008", ["model_ema"])
    assert a != model_hash(run_dir / "checkpoints" / "step_000012", ["model"])
    with pytest.raises(CheckpointError, match="no G.safetensors"):
        model_hash(run_dir / "checkpoints" / "step_000012", ["G"])


def test_read_run_config_outside_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="not a limner run folder"):
        read_run_config(tmp_path)


def test_same_step_rewrite_replaces_the_directory(tmp_path):
    _write(tmp_path, 3, value=1.0)
    path = _write(tmp_path, 3, value=2.0)
    net = ToyDenoiser()
    load_module_weights(net, path / "model.safetensors")
    assert torch.all(net.conv1.weight == 2.0)
    assert not list((tmp_path / "checkpoints").glob(".old-*"))


def test_fresh_start_refuses_a_folder_with_checkpoints(trained):
    run_dir, _ = trained
    with pytest.raises(UsageError, match="already holds checkpoints"):
        make_trainer(run_dir, steps=12)


def test_resume_without_checkpoint_never_starts_from_scratch(tmp_path):
    make_trainer(tmp_path, steps=4)  # writes config.json only
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        make_trainer(tmp_path, steps=4, resume=True)


def test_state_missing_a_component_is_an_error(trained, monkeypatch):
    run_dir, _ = trained
    real = ck.load_state

    def without_optimizers(path):
        state = real(path)
        del state["optimizers"]
        return state

    monkeypatch.setattr(ck, "load_state", without_optimizers)
    with pytest.raises(CheckpointError, match="lacks optimizers"):
        make_trainer(run_dir, steps=12, resume=True)


def test_gan_state_needs_both_optimizers(tmp_path):
    from .toy_family import ToyGAN

    class OnlyG(ToyGAN):
        def optimizers(self):
            return {"G": super().optimizers()["G"]}

    make_trainer(tmp_path, ToyGAN(), steps=4).fit()
    with pytest.raises(CheckpointError, match=r"optimizers \['D', 'G'\], the family uses \['G'\]"):
        make_trainer(tmp_path, OnlyG(), steps=4, resume=True)
