"""The trainer loop: run folder contents, step context services, non-finite policy, config
checks on resume, graceful stops and logging continuity (RELIABILITY.md C.42, C.43, C.47, C.49)."""

from __future__ import annotations

import io
import json
import math
import signal

import pytest
import torch

from limner.errors import NonFiniteLossError, UsageError
from limner.training import Callback, TrainingInterrupted
from limner.training.callbacks import ProgressBar, SampleGridCallback
from limner.training.checkpoint import checkpoint_dirs, find_latest_valid

from .toy_family import ToyFamily, ToyGAN, assert_same, checkpoint_contents, make_trainer, toy_data


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fit_writes_the_run_folder(tmp_path):
    trainer = make_trainer(tmp_path, steps=10, save_every=5, sample_every=5, sample_count=4,
                           tensorboard=True, lr=3e-2)
    result = trainer.fit()
    assert result.step == 10 and result.checkpoint.name == "step_000010"
    assert math.isfinite(result.metrics["loss"]) and "grad_norm" in result.metrics
    assert json.loads((tmp_path / "config.json").read_text())["family"]["name"] == "toy"
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    for key in ("loss", "lr", "grad_norm", "img_per_s", "time", "epoch", "kimg"):
        assert key in rows[-1]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {p.name for p in (tmp_path / "samples").iterdir()} == {"step_000005.png", "step_000010.png"}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000005", "step_000010"]


def test_lr_warms_up_linearly_then_stays(tmp_path):
    trainer = make_trainer(tmp_path, steps=6, log_every=1, warmup_steps=4, lr=0.02)
    trainer.fit()
    lrs = [r["lr"] for r in _metrics(tmp_path)]
    assert lrs == pytest.approx([0.005, 0.01, 0.015, 0.02, 0.02, 0.02])


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_lr_decays_to_the_floor_at_the_last_step(tmp_path, decay):
    trainer = make_trainer(tmp_path, steps=6, log_every=1, warmup_steps=2, lr=0.02, lr_decay=decay,
                           min_lr_ratio=0.1)
    trainer.fit()
    lrs = [r["lr"] for r in _metrics(tmp_path)]
    # updates 1-2 warm up; updates 3..6 decay over p = 1/4 .. 1 to 0.1 * lr at the last one
    p = [0.25, 0.5, 0.75, 1.0]
    shape = [(1 + math.cos(math.pi * q)) / 2 for q in p] if decay == "cosine" else [1 - q for q in p]
    assert lrs == pytest.approx([0.01, 0.02] + [0.02 * (0.1 + 0.9 * f) for f in shape])


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """Mean loss over 2 micro-batches of 4 == loss over the batch of 8, so the updates agree."""

    class NoNoise(ToyFamily):
        def train_step(self, batch, ctx):
            for micro in ctx.micro_batches(batch):
                loss = torch.nn.functional.mse_loss(ctx.net("model")(micro.images), micro.images)
                ctx.backward(loss, "model")
            ctx.optimizer_step("model")
            return {"loss": 0.0}

    runs = []
    for accum in (1, 2):
        fam = NoNoise()
        make_trainer(tmp_path / f"a{accum}", fam, steps=3, grad_accum=accum, grad_clip=None).fit()
        runs.append(fam.net.state_dict())
    for key in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.allclose(runs[0][key].float(), runs[1][key].float(), atol=1e-6), key


def test_grad_clip_bounds_the_gradient_the_optimizer_sees(tmp_path):
    trainer = make_trainer(tmp_path, steps=3, grad_clip=1e-3, log_every=1)
    opt = trainer.optimizers["model"]
    real_step, seen = opt.step, []

    def spy(*args, **kwargs):
        seen.append(float(torch.nn.utils.get_total_norm([p.grad for p in trainer.family.net.parameters()])))
        return real_step(*args, **kwargs)

    opt.step = spy
    trainer.fit()
    assert len(seen) == 3 and all(n == pytest.approx(1e-3, rel=1e-3) for n in seen)
    assert all(r["grad_norm"] > 1e-2 for r in _metrics(tmp_path))  # logged: the pre-clip norm


def test_ddp_gradient_sync_only_on_the_last_micro_batch(tmp_path, monkeypatch):
    """The DDP sync switch is read at forward time: off for micro-batch 1, on for the last. (That
    DDP then all-reduces only after the last micro-batch is checked on two real ranks by
    test_distributed.py, through a comm hook in ddp_script.py.)"""
    events = []
    monkeypatch.setattr("limner.training.context.set_grad_sync",
                        lambda module, enabled: events.append(enabled))

    class Recording(ToyFamily):
        def train_step(self, batch, ctx):
            for micro in ctx.micro_batches(batch):
                events.append("forward")
                loss = ctx.net("model")(micro.images).square().mean()
                ctx.backward(loss, "model")
            ctx.optimizer_step("model")
            events.append("step")
            return {"loss": float(loss.detach())}

    make_trainer(tmp_path, Recording(), steps=1, grad_accum=3, batch_size=6).fit()
    forwards = [events[i - 1] for i, e in enumerate(events) if e == "forward"]
    assert forwards == [False, False, True]
    assert events[events.index("step") - 1] is False  # reset for the next step


def test_bf16_autocast_trains_finite(tmp_path):
    result = make_trainer(tmp_path, steps=4, precision="bf16").fit()
    assert math.isfinite(result.metrics["loss"])


def test_gan_step_owns_two_optimizers(tmp_path):
    fam = ToyGAN()
    d_before = [p.clone() for p in fam.D.parameters()]
    result = make_trainer(tmp_path, fam, steps=4, grad_accum=2).fit()
    for key in ("loss_D", "loss_G", "grad_norm/D", "grad_norm/G", "lr/D", "lr/G"):
        assert key in result.metrics
    assert result.metrics["lr/D"] == pytest.approx(1e-3)  # the spec's own LR
    assert not all(torch.equal(a, b) for a, b in zip(d_before, fam.D.parameters()))
    files = {p.name for p in result.checkpoint.iterdir()}
    assert {"G.safetensors", "D.safetensors", "G_ema.safetensors"} <= files
    assert "D_ema.safetensors" not in files


def test_family_randomness_comes_from_the_step_generator(tmp_path):
    a, b = ToyFamily(), ToyFamily()
    make_trainer(tmp_path / "a", a, steps=3).fit()
    torch.manual_seed(12345)  # the global RNG must not matter
    make_trainer(tmp_path / "b", b, steps=3).fit()
    assert_same(dict(a.net.state_dict()), dict(b.net.state_dict()))


# -- non-finite losses ---------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, ToyFamily(nan_at=7), steps=12, save_every=2)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 7.*step_000006"):
        trainer.fit()
    assert trainer.outcome == "failed"
    newest = find_latest_valid(tmp_path)
    assert newest.name == "step_000006"
    for name, tensors in checkpoint_contents(newest).items():
        if name.endswith(".safetensors"):
            assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    # it resumes from there once the cause is gone
    resumed = make_trainer(tmp_path, ToyFamily(), steps=8, save_every=2, resume=True)
    assert resumed.step == 6 and resumed.fit().step == 8


def test_skip_mode_skips_the_update_and_continues(tmp_path):
    fam = ToyFamily(nan_at=3, nan_steps=2)
    trainer = make_trainer(tmp_path, fam, steps=6, nonfinite="skip", log_every=1)
    result = trainer.fit()
    rows = _metrics(tmp_path)
    assert [r["skipped"] for r in rows] == [0, 0, 1, 1, 0, 0]
    assert rows[2]["loss"] is None  # NaN is written as null, the file stays valid JSON
    assert trainer.ema.updates == 4 and trainer.schedulers["model"].updates == 4
    assert all(torch.isfinite(p).all() for p in fam.net.parameters())
    assert result.step == 6


def test_skip_mode_aborts_after_consecutive_skips(tmp_path):
    fam = ToyFamily(nan_at=2, nan_steps=100)
    trainer = make_trainer(tmp_path, fam, steps=10, nonfinite="skip", max_consecutive_skips=3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        trainer.fit()
    assert trainer.step == 3


# -- config checks on resume ---------------------------------------------------------------------


def test_changed_config_is_refused_with_the_key_named(tmp_path):
    make_trainer(tmp_path, steps=4).fit()
    with pytest.raises(UsageError, match=r"train\.lr: 0\.01 -> 0\.02"):
        make_trainer(tmp_path, steps=4, lr=0.02, resume=True)
    with pytest.raises(UsageError, match=r"family\.config\.width: 4 -> 5"):
        make_trainer(tmp_path, ToyFamily(width=5), steps=4, resume=True)
    with pytest.raises(UsageError, match="train.batch_size"):
        make_trainer(tmp_path, steps=4, batch_size=4, resume=True)


def test_more_steps_are_allowed_and_recorded(tmp_path):
    make_trainer(tmp_path, steps=4).fit()
    result = make_trainer(tmp_path, steps=8, resume=True).fit()
    assert result.step == 8
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 8
    with pytest.raises(UsageError, match="below the checkpoint"):
        make_trainer(tmp_path, steps=6, resume=True)


def test_allow_config_change_is_explicit(tmp_path):
    from limner.training import Trainer

    from .toy_family import run_config_for, small_config

    make_trainer(tmp_path, steps=4).fit()
    fam = ToyFamily()
    trainer = Trainer(fam, toy_data(), small_config(steps=6, lr=0.02), tmp_path,
                      run_config=run_config_for(fam), progress=False, resume=True,
                      allow_config_change=["train.lr"])
    assert trainer.fit().step == 6


# -- graceful stops ------------------------------------------------------------------------------


class RaiseSignalAt(Callback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            signal.raise_signal(self.signum)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                          (signal.SIGUSR1, 138)])
def test_signal_saves_at_the_current_step_and_resumes_exactly(tmp_path, signum, code):
    straight = make_trainer(tmp_path / "straight", steps=10, save_every=100)
    straight.fit()
    trainer = make_trainer(tmp_path / "run", steps=10, save_every=100,
                           callbacks=[RaiseSignalAt(5, signum)])
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert info.value.signum == signum and info.value.exit_code == code
    assert info.value.step == 5 and info.value.checkpoint.name == "step_000005"
    assert find_latest_valid(tmp_path / "run").name == "step_000005"
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    resumed = make_trainer(tmp_path / "run", steps=10, save_every=100, resume=True)
    assert resumed.step == 5
    resumed.fit()
    assert_same(checkpoint_contents(tmp_path / "run/checkpoints/step_000010"),
                checkpoint_contents(tmp_path / "straight/checkpoints/step_000010"))


def test_request_stop_from_code(tmp_path):
    class StopAt(Callback):
        def on_step_end(self, trainer, step, metrics):
            if step == 3:
                trainer.request_stop()

    with pytest.raises(TrainingInterrupted) as info:
        make_trainer(tmp_path, steps=10, callbacks=[StopAt()]).fit()
    assert info.value.signum is None and info.value.step == 3


def test_second_sigint_aborts_immediately(tmp_path):
    class DoubleInterrupt(Callback):
        def on_step_end(self, trainer, step, metrics):
            if step == 2:
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, steps=10, save_every=1, callbacks=[DoubleInterrupt()]).fit()
    assert find_latest_valid(tmp_path).name == "step_000002"


# -- logging continuity --------------------------------------------------------------------------


def test_metrics_steps_are_monotonic_across_a_resume(tmp_path):
    make_trainer(tmp_path, steps=6, save_every=4, log_every=1).fit()
    # a crash after step 6 without a checkpoint at 6 is simulated by dropping it
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step_000006")
    (tmp_path / "metrics.jsonl").open("a").write('{"step": 7, "loss": 0.1')  # torn line
    make_trainer(tmp_path, steps=9, save_every=4, log_every=1, resume=True).fit()
    steps = [r["step"] for r in _metrics(tmp_path)]
    assert steps == list(range(1, 10))


def test_progress_lines_without_a_tty(tmp_path):
    stream = io.StringIO()
    bar = ProgressBar(stream=stream, line_interval=0.0)
    make_trainer(tmp_path, steps=4, log_every=2, callbacks=[bar], progress=True).fit()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("step 2/4 loss=") and "img/s=" in lines[0] and "lr=" in lines[0]
    assert lines[-1].startswith("step 4/4")


def test_progress_bar_on_a_tty(tmp_path):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    stream = FakeTTY()
    make_trainer(tmp_path, steps=3, callbacks=[ProgressBar(stream=stream)], progress=True).fit()
    text = stream.getvalue()
    assert "3/3" in text and "loss=" in text and "img/s=" in text


def test_resume_classmethod(tmp_path):
    from limner.training import Trainer

    from .toy_family import run_config_for, small_config

    make_trainer(tmp_path, steps=2).fit()
    fam = ToyFamily()
    trainer = Trainer.resume(fam, toy_data(), small_config(steps=4), tmp_path,
                             run_config=run_config_for(fam), progress=False)
    assert trainer.step == 2 and trainer.fit().step == 4


def test_sample_grid_uses_ema_weights_and_leaves_training_untouched(tmp_path):
    seen = {}

    class Recording(ToyFamily):
        def generate(self, request, *, callback=None):
            seen["weight"] = self.net.conv1.weight.detach().clone()
            seen["training"] = self.net.training
            torch.rand(3)  # consumes global RNG; the trainer must not notice
            return super().generate(request)

    fam = Recording()
    grid = SampleGridCallback(every=3, requests=lambda tr: [tr_request()], labels=["a", "b"])
    trainer = make_trainer(tmp_path, fam, steps=3, callbacks=[grid])
    trainer.fit()
    assert torch.equal(seen["weight"], trainer.ema.shadow["model"]["conv1.weight"])
    assert not torch.equal(fam.net.conv1.weight, seen["weight"])
    assert seen["training"] is False and fam.net.training
    assert (tmp_path / "samples" / "step_000003.png").is_file()
    # and sampling does not change training: same weights as a run without grids
    other = ToyFamily()
    make_trainer(tmp_path / "plain", other, steps=3).fit()
    assert_same(dict(other.net.state_dict()), dict(fam.net.state_dict()))


def tr_request():
    from limner.generation.request import BatchRequest

    return BatchRequest(seeds=[0, 1])
