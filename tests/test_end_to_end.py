"""The main job end to end through the CLI on real images from the bundled demo subset: train a
tiny text-to-image model, resume exactly in a new process, sample deterministically, read the
record back and regenerate the identical image from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from limner.cli.main import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "emoji-demo"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """12 captioned emoji copied from the bundled subset (imagefolder layout)."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    rows = [json.loads(line) for line in (DEMO / "metadata.jsonl").read_text().splitlines()][::30][:12]
    with open(root / "metadata.jsonl", "w") as f:
        for row in rows:
            shutil.copy(DEMO / row["file_name"], root / row["file_name"])
            f.write(json.dumps({"file_name": row["file_name"], "text": row["text"]}) + "\n")
    return root


def limner(*args: str, cache: Path) -> subprocess.CompletedProcess:
    """Run the CLI in a new process (as a user would), failing loudly with its output."""
    env = {**os.environ, "LIMNER_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "limner", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, f"limner {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def train_args(data: Path, out: Path, steps: int) -> list[str]:
    return [
        "train", str(data), "--out", str(out), "--preset", "tiny", "--resolution", "16",
        "--steps", str(steps), "--batch-size", "4", "--save-every", "2", "--sample-every", "4",
        "--seed", "3", "--no-progress",
    ]


def weights(run: Path) -> dict[str, np.ndarray]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    ckpt = run / "checkpoints" / latest
    return {**load_file(ckpt / "model.safetensors"), **{
        f"ema.{k}": v for k, v in load_file(ckpt / "model_ema.safetensors").items()}}


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    run = tmp / "run"
    limner(*train_args(tiny_data, run, 8), cache=tmp / "cache")
    return run


def test_run_folder_layout(straight_run):
    cfg = json.loads((straight_run / "config.json").read_text())
    assert cfg["family"]["name"] == "diffusion"
    assert cfg["family"]["config"]["encoder"]["kind"] == "text"
    assert cfg["limner_version"]
    assert (straight_run / "checkpoints" / "latest").read_text().strip().endswith("8")
    lines = [json.loads(x) for x in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(np.isfinite(x["loss"]) for x in lines if "loss" in x)
    assert list((straight_run / "samples").glob("*.png"))
    assert list((straight_run / "tensorboard").rglob("events.*"))


def test_resume_is_exact_in_a_new_process(tiny_data, straight_run, tmp_path):
    # 12 images / batch 4 = 3 steps an epoch: stopping at 5 is mid-epoch.
    run = tmp_path / "run"
    limner(*train_args(tiny_data, run, 5), cache=tmp_path / "cache")
    limner(*train_args(tiny_data, run, 8), "--resume", cache=tmp_path / "cache")
    a, b = weights(straight_run), weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs after resume"


def test_sample_is_deterministic_and_replayable(straight_run, tmp_path):
    args = ["sample", str(straight_run), "--prompt", "large red circle", "--num", "3",
            "--seed", "11", "--steps", "4"]
    limner(*args, "--out", str(tmp_path / "a"), cache=tmp_path / "cache")
    limner(*args, "--out", str(tmp_path / "b"), cache=tmp_path / "cache")
    files_a = sorted((tmp_path / "a").glob("*.png"))
    files_b = sorted((tmp_path / "b").glob("*.png"))
    assert len(files_a) == 3
    for fa, fb in zip(files_a, files_b):
        assert np.array_equal(np.asarray(Image.open(fa)), np.asarray(Image.open(fb)))
    info = limner("info", "--json", str(files_a[1]), cache=tmp_path / "cache")
    record = json.loads(info.stdout)
    assert record["seed"] == 12 and record["prompt"] == "large red circle"
    assert record["sampler"] == "dpmpp_2m" and record["steps"] == 4
    assert record["torch_version"] and record["python_version"] and record["device"] == "cpu"
    limner("sample", "--from-image", str(files_a[1]), "--out", str(tmp_path / "c"), cache=tmp_path / "cache")
    (again,) = list((tmp_path / "c").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(files_a[1])))


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "ddim", "euler_ancestral"])
def test_every_sampler_from_a_run(straight_run, tmp_path, sampler, capsys):
    out = tmp_path / sampler
    code = main(["sample", str(straight_run), "--prompt", "green heart", "--negative", "grinning face",
                 "--sampler", sampler, "--steps", "3", "--num", "2", "--seed", "0", "--cfg", "2.5",
                 "--out", str(out)])
    assert code == 0
    images = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
    assert len(images) == 2 and images[0].shape == (16, 16, 3)
    assert not np.array_equal(images[0], images[1])  # different seeds, different images


def test_unknown_label_on_text_run_is_a_clear_error(straight_run, tmp_path, capsys):
    code = main(["sample", str(straight_run), "--label", "cat", "--out", str(tmp_path / "o")])
    assert code in (1, 2)
    assert "label" in capsys.readouterr().err.lower()


def test_ctrl_c_saves_and_resume_continues(tiny_data, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    env = {**os.environ, "LIMNER_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = train_args(tiny_data, run, 100000)
    proc = subprocess.Popen([sys.executable, "-m", "limner", *args], env=env,
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
    latest = (run / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.split("_")[-1])
    assert stopped_at >= 2
    limner(*train_args(tiny_data, run, stopped_at + 2), "--resume", cache=tmp_path / "cache")
    assert (run / "checkpoints" / "latest").read_text().strip().endswith(str(stopped_at + 2))
