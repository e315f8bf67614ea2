"""Diffusion-specific end-to-end checks through the CLI on real images from the bundled demo
subset: every sampler with CFG and a negative prompt, Ctrl-C then resume, clear label errors.
The checks every family shares live in test_family_contract.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limner.cli.main import main

def train_args(data: Path, out: Path, steps: int) -> list[str]:
    return [
        "train", str(data), "--out", str(out), "--preset", "tiny", "--resolution", "16",
        "--steps", str(steps), "--batch-size", "4", "--save-every", "2", "--sample-every", "4",
        "--seed", "3", "--no-progress",
    ]


def checkpoint_tensors(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return {f"{f.stem}.{k}": v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def straight_run(tiny_data, cli, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    run = tmp / "run"
    cli(*train_args(tiny_data, run, 8), cache=tmp / "cache")
    return run


def _library_images(run: Path, **request) -> list[np.ndarray]:
    from limner.generation.pipeline import generate
    from limner.generation.request import GenerationRequest

    base = dict(run=str(run), prompt="green heart", negative="grinning face", steps=3, num=2, seed=0, cfg=2.5)
    return [np.asarray(r.image) for r in generate(GenerationRequest(**{**base, **request}))]


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "ddim", "euler_ancestral"])
def test_every_sampler_from_a_run(straight_run, tmp_path, sampler, capsys):
    """The CLI's pixels are the library's for the same sampler, CFG and negative prompt (a CLI
    that dropped one of them would give the pixels of the default instead)."""
    out = tmp_path / sampler
    code = main(["sample", str(straight_run), "--prompt", "green heart", "--negative", "grinning face",
                 "--sampler", sampler, "--steps", "3", "--num", "2", "--seed", "0", "--cfg", "2.5",
                 "--out", str(out)])
    assert code == 0
    images = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
    assert len(images) == 2 and images[0].shape == (16, 16, 3)
    assert not np.array_equal(images[0], images[1])  # different seeds, different images
    expected = _library_images(straight_run, sampler=sampler)
    assert all(np.array_equal(a, b) for a, b in zip(images, expected))


def test_sampler_cfg_and_negative_each_change_the_pixels(straight_run):
    """What makes test_every_sampler_from_a_run able to fail: on this run each of the three
    options, left at its default, gives other pixels."""
    chosen = _library_images(straight_run, sampler="euler")
    for default in (dict(sampler=None), dict(sampler="euler", cfg=None), dict(sampler="euler", negative=None)):
        assert not np.array_equal(np.stack(chosen), np.stack(_library_images(straight_run, **default))), default


def test_kept_convolution_weights_do_not_change_a_pixel(straight_run, monkeypatch):
    """README ("CPU kernels"): convolutions keep their reordered weight or Winograd transform while
    the weights do not change, without changing a pixel. Sampling a run, then the same modules
    after another step's weights were loaded into them in place (which the kept weights must
    notice), gives exactly the pixels of fresh loads that keep nothing."""
    from limner.generation.pipeline import generate, load_run
    from limner.generation.request import GenerationRequest
    from limner.nn import conv

    request = GenerationRequest(run=str(straight_run), prompt="green heart", steps=3, num=2, seed=0, cfg=2.0)
    pixels = lambda loaded: np.stack([np.asarray(g.image) for g in generate(request, loaded=loaded)])  # noqa: E731
    reused, get = [], conv.DerivedWeight.get

    def recording(self, weight, extra, make):
        made = []
        kept = get(self, weight, extra, lambda: made.append(1) or make())
        reused.append(not made)
        return kept

    monkeypatch.setattr(conv.DerivedWeight, "get", recording)
    loaded = load_run(straight_run, step=4)
    kept4 = pixels(loaded)
    step8 = load_run(straight_run, step=8).family.modules()
    for name, module in loaded.family.modules().items():
        module.load_state_dict(step8[name].state_dict())
    kept8 = pixels(loaded)
    assert sum(reused) > len(reused) // 2  # most calls used a kept weight
    monkeypatch.setattr(conv.DerivedWeight, "get", lambda self, weight, extra, make: make())
    assert np.array_equal(kept4, pixels(load_run(straight_run, step=4)))
    assert np.array_equal(kept8, pixels(load_run(straight_run, step=8)))
    assert not np.array_equal(kept4, kept8)


def test_replay_refuses_a_run_whose_weights_changed(straight_run, tiny_data, cli, tmp_path, capsys):
    """README: a record names its model hash, so ``--from-image`` against other weights at the same
    step (here a run trained with another seed) is refused rather than giving other pixels; the
    same weights in a copied folder replay."""
    import shutil

    assert main(["sample", str(straight_run), "--step", "4", "--prompt", "green heart", "--steps", "2",
                 "--num", "1", "--seed", "1", "--out", str(tmp_path / "a")]) == 0
    png = sorted((tmp_path / "a").glob("*.png"))[0]
    copy = tmp_path / "copy"
    shutil.copytree(straight_run, copy)
    assert main(["sample", str(copy), "--from-image", str(png), "--out", str(tmp_path / "same")]) == 0
    other = tmp_path / "other"
    cli(*train_args(tiny_data, other, 4)[:-3], "--seed", "4", "--no-progress", cache=tmp_path / "cache")
    capsys.readouterr()
    assert main(["sample", str(other), "--from-image", str(png), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "the weights changed" in err and "step 4" in err, err
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("*.png"))


def test_sigma_max_changes_the_start_and_is_replayed_from_the_record(straight_run, tmp_path, capsys):
    """--sigma-max starts the sampler lower; the record keeps it, so --from-image replays it."""
    from limner.generation.pngmeta import read_record

    common = ["sample", str(straight_run), "--prompt", "green heart", "--steps", "3", "--num", "1",
              "--seed", "5", "--cfg", "2"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    assert main([*common, "--sigma-max", "5", "--out", str(tmp_path / "low")]) == 0
    default, low = (sorted((tmp_path / d).glob("*.png"))[0] for d in ("default", "low"))
    assert not np.array_equal(np.asarray(Image.open(default)), np.asarray(Image.open(low)))
    assert read_record(default).sigma_max is None and read_record(low).sigma_max == 5.0
    assert "Sigma max: 5.0" in Image.open(low).text["parameters"]
    assert main(["sample", "--from-image", str(low), "--out", str(tmp_path / "again")]) == 0
    again = sorted((tmp_path / "again").glob("*.png"))[0]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(low)))


def test_bf16_precision_is_recorded_and_replayed(straight_run, tmp_path, fixed_rule):
    """--precision bf16 samples under bfloat16 autocast: close to float32 but not the same
    pixels, so the record keeps it (dtype) and --from-image replays it bitwise."""
    from limner.generation.pngmeta import read_record

    common = ["sample", str(straight_run), "--prompt", "green heart", "--steps", "4", "--num", "2", "--seed", "3"]
    assert main([*common, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*common, "--precision", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    full, low = (sorted((tmp_path / d).glob("*.png")) for d in ("fp32", "bf16"))
    a, b = (np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in files]) for files in (full, low))
    assert not np.array_equal(a, b) and np.abs(a - b).mean() < 8
    assert read_record(full[1]).dtype == "float32" and read_record(low[1]).dtype == "bfloat16"
    from limner.nn import conv

    # bfloat16 sampling takes the Winograd kernel too (on bfloat16 maps), and the record says so
    assert read_record(low[1]).cpu_kernels == conv.cpu_kernel_setting(bfloat16=True)
    assert read_record(full[1]).cpu_kernels == conv.cpu_kernel_setting()
    if read_record(full[1]).cpu_kernels.startswith("compiled+winograd"):
        assert read_record(low[1]).cpu_kernels == read_record(full[1]).cpu_kernels + "+bf16"
    assert "Precision: bf16" in Image.open(low[1]).text["parameters"]
    assert "Precision" not in Image.open(full[1]).text["parameters"]
    assert main(["sample", "--from-image", str(low[1]), "--out", str(tmp_path / "again")]) == 0
    again = sorted((tmp_path / "again").glob("*.png"))[0]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(low[1])))
    from limner.generation.interpolate import interpolate

    frames = interpolate(straight_run, (3, 3), 2, prompts=("green heart", "green heart"), steps=4,
                         precision="bf16")  # the same bf16 image as a walk's first frame
    assert np.abs(np.asarray(frames[0], dtype=np.int16) - b[0]).max() <= 2


def test_the_record_names_the_cpu_kernels_and_a_replay_with_others_warns(straight_run, tmp_path, monkeypatch, caplog,
                                                                         fixed_rule):
    """Compiled kernels and the Winograd tile round differently, so the record keeps which ran;
    replaying under another setting still works but says the pixels may differ."""
    from limner.generation import pipeline
    from limner.generation.pngmeta import read_record
    from limner.nn import conv, kernels

    if not kernels.available():
        pytest.skip(f"needs the compiled CPU kernels ({kernels.status()})")
    common = ["sample", str(straight_run), "--prompt", "green heart", "--steps", "3", "--num", "1", "--seed", "2"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    png = sorted((tmp_path / "a").glob("*.png"))[0]
    record = read_record(png)
    assert record.cpu_kernels == conv.cpu_kernel_setting() == f"compiled+winograd{conv.WINOGRAD_TILE}"
    with caplog.at_level("WARNING", logger="limner.generation.pipeline"):
        same = pipeline.regenerate(record)
    assert not caplog.records
    assert np.array_equal(np.asarray(same.image), np.asarray(Image.open(png)))
    monkeypatch.setattr(conv, "WINOGRAD_TILE", 0)
    with caplog.at_level("WARNING", logger="limner.generation.pipeline"):
        other = pipeline.regenerate(record)
    assert "pixels may differ slightly" in caplog.text and "'compiled'" in caplog.text
    assert np.abs(np.asarray(other.image, dtype=np.int16) - np.asarray(Image.open(png), dtype=np.int16)).max() <= 2


def test_interpolate_takes_sigma_max_like_sample(straight_run, tmp_path):
    """The frames of a one-seed, one-prompt walk are that seed's sample at the same --sigma-max."""
    from limner.generation.interpolate import interpolate

    common = ["--steps", "3", "--cfg", "2"]
    assert main(["sample", str(straight_run), "--prompt", "green heart", "--num", "1", "--seed", "5",
                 "--sigma-max", "5", *common, "--out", str(tmp_path / "s")]) == 0
    sampled = np.asarray(Image.open(sorted((tmp_path / "s").glob("*.png"))[0]), dtype=np.int16)
    frames = interpolate(straight_run, (5, 5), 2, prompts=("green heart", "green heart"), steps=3, cfg=2.0,
                         sigma_max=5.0)
    default = interpolate(straight_run, (5, 5), 2, prompts=("green heart", "green heart"), steps=3, cfg=2.0)
    assert np.abs(np.asarray(frames[0], dtype=np.int16) - sampled).max() <= 1
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(default[0]))
    walk = ["interpolate", str(straight_run), "--seeds", "5", "6", "--prompts", "green heart", "red heart", *common]
    assert main([*walk, "--frames", "2", "--sigma-max", "5", "--out", str(tmp_path / "walk.gif")]) == 0
    assert main([*walk, "--sigma-max", "0.001", "--out", str(tmp_path / "bad.gif")]) == 2
    assert not (tmp_path / "bad.gif").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "0.001"])
def test_bad_sigma_max_is_a_usage_error(straight_run, tmp_path, capsys, value):
    """Not positive: refused while parsing; below the run's sigma_min (0.002): refused by the run."""
    try:
        code = main(["sample", str(straight_run), "--prompt", "x", "--sigma-max", value, "--out", str(tmp_path / "o")])
    except SystemExit as exc:  # argparse's own exit for values it refuses
        code = exc.code
    assert code == 2
    assert "sigma" in capsys.readouterr().err.lower()
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))


def test_unknown_label_on_text_run_is_a_clear_error(straight_run, tmp_path, capsys):
    code = main(["sample", str(straight_run), "--label", "cat", "--out", str(tmp_path / "o")])
    assert code == 2  # README: bad arguments exit with code 2
    assert "label" in capsys.readouterr().err.lower()


def test_ctrl_c_saves_and_resume_continues(tiny_data, cli, tmp_path):
    import signal
    import time

    def args(out: Path, steps: int) -> list[str]:  # no periodic saves: a checkpoint is Ctrl-C's
        return [*train_args(tiny_data, out, steps), "--save-every", "100000"]

    run = tmp_path / "run"
    env = {**os.environ, "LIMNER_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "limner", *args(run, 100000)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    stopped_at = int(re.search(r"SIGINT at step (\d+)", err).group(1))
    assert stopped_at >= 10  # two metrics lines (every 5 steps) were written before the signal
    saved = [int(p.name.split("_")[-1]) for p in (run / "checkpoints").glob("step_*")]
    assert saved == [stopped_at]
    assert int((run / "checkpoints" / "latest").read_text().strip().split("_")[-1]) == stopped_at
    cli(*args(run, stopped_at + 2), "--resume", cache=tmp_path / "cache")
    assert (run / "checkpoints" / "latest").read_text().strip().endswith(str(stopped_at + 2))
    straight = tmp_path / "straight"
    cli(*args(straight, stopped_at + 2), cache=tmp_path / "cache")
    a, b = checkpoint_tensors(straight), checkpoint_tensors(run)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_layer_the_machines_plan_gives_to_onednn_is_named_in_the_record(straight_run, tmp_path, monkeypatch,
                                                                         caplog, fixed_rule):
    """Where this machine's measured plan (limner.nn.conv_plan) runs a layer's forward by another
    method than the fixed rule's (here oneDNN), the record says so (another machine's plan may round differently); replaying under the same
    plan is exact and silent, under another it warns."""
    from limner.generation import pipeline
    from limner.generation.pngmeta import read_record
    from limner.nn import conv, conv_plan, kernels

    if not kernels.available():
        pytest.skip(f"needs the compiled CPU kernels ({kernels.status()})")
    onednn = conv_plan.Plan()  # every part by oneDNN, wherever the fixed rule says Winograd

    def choose(key, default, measure):
        return conv_plan._note(key, onednn, default)

    monkeypatch.setattr(conv_plan, "choose", choose)
    common = ["sample", str(straight_run), "--prompt", "green heart", "--steps", "3", "--num", "1", "--seed", "2"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    png = sorted((tmp_path / "a").glob("*.png"))[0]
    record = read_record(png)
    assert record.cpu_kernels.startswith(conv.cpu_kernel_setting() + "+plan:")
    with caplog.at_level("WARNING", logger="limner.generation.pipeline"):
        same = pipeline.regenerate(record)
    assert not caplog.records
    assert np.array_equal(np.asarray(same.image), np.asarray(Image.open(png)))
    monkeypatch.undo()  # the suite's setting: every layer on Winograd
    with caplog.at_level("WARNING", logger="limner.generation.pipeline"):
        other = pipeline.regenerate(record)
    assert "pixels may differ slightly" in caplog.text and "+plan:" in caplog.text
    assert other.record.cpu_kernels == conv.cpu_kernel_setting()
    assert np.abs(np.asarray(other.image, dtype=np.int16) - np.asarray(Image.open(png), dtype=np.int16)).max() <= 2
