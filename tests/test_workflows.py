"""Library-level training workflow: bad files are skipped with their path and never stop a run;
the condition follows the data."""

from __future__ import annotations

import numpy as np
from PIL import Image

from limner.workflows import TrainOptions, train


def test_bad_files_are_skipped_with_their_path(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(data / f"ok{i}.png")
        (data / f"ok{i}.txt").write_text(f"thing {i}")
    (data / "empty.png").write_bytes(b"")
    good = (data / "ok0.png").read_bytes()
    (data / "cut.png").write_bytes(good[: len(good) // 2])
    result = train(TrainOptions(
        data=data, out=tmp_path / "run", preset="tiny", resolution=16, progress=False,
        cache_dir=tmp_path / "cache",
        train={"steps": 2, "batch_size": 4, "sample_every": 0, "save_every": 2},
    ))
    assert result.step == 2
    err = capsys.readouterr().err
    assert "2 of 8 files skipped" in err
    assert "empty.png" in err and "cut.png" in err


def test_extra_callbacks_reach_the_trainer(tmp_path, noise_images):
    from limner.training.callbacks import Callback

    class StopAfterTwo(Callback):
        seen: list[int] = []

        def on_step_end(self, trainer, step, metrics):
            self.seen.append(step)
            if step == 2:
                trainer.request_stop()

    from limner.training.signals import TrainingInterrupted
    import pytest

    with pytest.raises(TrainingInterrupted) as info:
        train(TrainOptions(
            data=noise_images(tmp_path / "data", seed=1), out=tmp_path / "run", preset="tiny", resolution=16, progress=False,
            cache_dir=tmp_path / "cache", callbacks=[StopAfterTwo()],
            train={"steps": 10, "batch_size": 4, "sample_every": 0, "save_every": 0},
        ))
    assert StopAfterTwo.seen == [1, 2] and info.value.step == 2


def test_resume_takes_the_runs_family_and_refuses_another(tmp_path, noise_images):
    """--resume without --family continues the saved family; a different --family or a --vae
    on a run that has none is a usage error naming the option, not silently ignored."""
    import pytest

    from limner.errors import UsageError

    data, out = noise_images(tmp_path / "data", seed=1), tmp_path / "run"
    common = dict(data=data, out=out, preset="tiny", resolution=16, progress=False, cache_dir=tmp_path / "cache")
    train(TrainOptions(family="vae", train={"steps": 1, "batch_size": 4, "sample_every": 0}, **common))
    result = train(TrainOptions(resume=True, train={"steps": 2}, **common))  # no --family: the run's
    assert result.step == 2
    with pytest.raises(UsageError, match="--family: .* is a vae run"):
        train(TrainOptions(resume=True, family="gan", train={"steps": 3}, **common))
    with pytest.raises(UsageError, match="--vae: .* is a vae run; --vae does not apply to it"):
        train(TrainOptions(resume=True, family_options={"vae": out}, train={"steps": 3}, **common))
