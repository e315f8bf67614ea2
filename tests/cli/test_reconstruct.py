"""``limner reconstruct``: input|reconstruction pairs from a real VAE run, PSNR per image and mean,
the inf convention for exact reconstructions, and usage errors before any model is built."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from limner.cli import reconstruct_cmd
from limner.cli.args import Parser
from limner.errors import UsageError

VAE_ENTRY = "limner.models.vae.family:VAEFamily"


@pytest.fixture(autouse=True)
def vae_registered(monkeypatch):
    torch.set_num_threads(1)
    import limner.models.registry as registry

    monkeypatch.setitem(registry.FAMILIES, "vae", VAE_ENTRY)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny KL VAE run trained for 2 steps on 16 px images."""
    import limner.models.registry as registry
    from limner.workflows import TrainOptions, train

    base = tmp_path_factory.mktemp("vae-run")
    rng = np.random.default_rng(0)
    np.savez(base / "d.npz", images=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.FAMILIES, "vae", VAE_ENTRY)
        train(TrainOptions(
            data=base / "d.npz", out=base / "run", family="vae", preset="tiny", resolution=16,
            progress=False, cache_dir=base / "cache",
            train={"steps": 2, "batch_size": 4, "save_every": 2, "sample_every": 0, "tensorboard": False},
        ))
    return base / "run"


@pytest.fixture()
def images(tmp_path):
    """Two PNGs: one at the run's size, one larger and not square (cropped and resized)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def parse(*argv: str):
    parser = Parser(prog="limner")
    reconstruct_cmd.register(parser.add_subparsers(dest="command", parser_class=Parser))
    return parser.parse_args(["reconstruct", *argv])


def test_writes_pairs_and_prints_psnr(run_dir, images, tmp_path, capsys):
    out = tmp_path / "rec"
    args = parse(str(run_dir), str(images / "a.png"), str(images / "b.png"), "--out", str(out))
    assert args.func(args) == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["00000-a.png", "00001-b.png"]
    for path in written:
        pair = np.asarray(Image.open(path))
        assert pair.shape == (16, 32, 3)  # input | reconstruction
    src = np.asarray(Image.open(written[0]))[:, :16]
    assert np.array_equal(src, np.asarray(Image.open(images / "a.png")))  # left half = input
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("PSNR" in line for line in lines)
    values = [float(re.search(r"(\S+) dB$", line).group(1)) for line in lines]
    assert all(math.isfinite(v) and 0 < v < 100 for v in values)
    assert values[2] == pytest.approx((values[0] + values[1]) / 2, abs=0.01)


def test_folder_argument_and_no_overwrite(run_dir, images, tmp_path, capsys):
    out = tmp_path / "rec"
    for _ in range(2):
        args = parse(str(run_dir), str(images), "--out", str(out), "--batch-size", "1")
        assert args.func(args) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["00000-a-1.png", "00000-a.png", "00001-b-1.png", "00001-b.png"]
    assert "notes" not in capsys.readouterr().out


def test_exact_reconstruction_reports_inf(run_dir, images, tmp_path, capsys, monkeypatch):
    from limner.models.vae.family import VAEFamily

    monkeypatch.setattr(VAEFamily, "reconstruct", lambda self, x, **kw: x.clone())
    args = parse(str(run_dir), str(images / "a.png"), "--out", str(tmp_path / "rec"))
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("PSNR inf dB")
    assert lines[-1] == "mean PSNR over 1 image(s): inf dB"


def test_psnr_helpers():
    assert reconstruct_cmd.format_psnr(math.inf) == "inf dB"
    assert reconstruct_cmd.format_psnr(31.4159) == "31.42 dB"
    assert reconstruct_cmd.mean_psnr([20.0, 30.0]) == 25.0
    assert reconstruct_cmd.mean_psnr([20.0, math.inf]) == math.inf


@pytest.mark.parametrize(
    "make_argv, needle",
    [
        (lambda run, imgs, tmp: [str(run), str(tmp / "missing.png"), "--out", str(tmp / "o")], "does not exist"),
        (lambda run, imgs, tmp: [str(run), str(tmp / "empty"), "--out", str(tmp / "o")], "no image files"),
        (lambda run, imgs, tmp: [str(tmp / "empty"), str(imgs), "--out", str(tmp / "o")], "not a limner run"),
        (lambda run, imgs, tmp: [str(tmp / "nope"), str(imgs), "--out", str(tmp / "o")], "RUN_DIR"),
        (lambda run, imgs, tmp: [str(run), str(imgs), "--out", str(imgs / "notes.txt")], "--out"),
    ],
)
def test_bad_arguments_are_usage_errors(run_dir, images, tmp_path, make_argv, needle):
    (tmp_path / "empty").mkdir()
    args = parse(*make_argv(run_dir, images, tmp_path))
    with pytest.raises(UsageError, match=needle):
        args.func(args)
    assert not (tmp_path / "o").exists()


def test_refuses_runs_of_other_families(images, tmp_path, monkeypatch):
    import limner.generation.pipeline as pipeline

    from limner.models.registry import declaration

    fake = SimpleNamespace(family=SimpleNamespace(name="diffusion", declaration=declaration("diffusion")))
    monkeypatch.setattr(pipeline, "load_run", lambda *a, **k: fake)
    args = parse(str(tmp_path), str(images), "--out", str(tmp_path / "o"))
    with pytest.raises(UsageError, match="diffusion run"):
        args.func(args)


def test_bad_numbers_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("RUN", "x.png", "--out", "o", "--batch-size", "0")
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err
