"""Usage errors exit with code 2 and one line naming the argument, before any model is built."""

from __future__ import annotations

import pytest

from limner.cli.main import main


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "DATA", "--out", "o", "--steps", "0"], "--steps"),
        (["train", "DATA", "--out", "o", "--steps", "-1"], "--steps"),
        (["train", "DATA", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (["train", "DATA", "--out", "o", "--lr", "nan"], "--lr"),
        (["train", "DATA", "--out", "o", "--lr", "inf"], "--lr"),
        (["train", "DATA", "--out", "o", "--lr", "0"], "--lr"),
        (["train", "DATA", "--out", "o", "--cond", "image"], "--cond"),
        (["train", "DATA"], "--out"),
        (["sample", "RUN", "--out", "o", "--cfg", "nan"], "--cfg"),
        (["sample", "RUN", "--out", "o", "--cfg", "-1"], "--cfg"),
        (["sample", "RUN", "--out", "o", "--sampler", "nope"], "--sampler"),
        (["sample", "RUN", "--out", "o", "--steps", "0"], "--steps"),
        (["sample", "RUN", "--out", "o", "--seed", "-2"], "--seed"),
        (["sample", "RUN", "--out", "o", "--seed", str(2**63)], "--seed"),
        (["sample", "RUN", "--out", "o", "--num", "x"], "--num"),
    ],
)
def test_bad_numbers_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err
    assert not (tmp_path / "o").exists()


def test_missing_data_path(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "DATA" in err and "does not exist" in err
    assert not out.exists()


def test_out_inside_data(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", str(data), "--out", str(data / "run")]) == 2
    assert "--out" in capsys.readouterr().err


def test_out_not_empty_without_resume(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["train", str(data), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_resume_without_run(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cuda_without_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "--device" in capsys.readouterr().err


def test_unknown_family_and_preset(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--family", "gpt"]) == 2
    assert "--family" in capsys.readouterr().err
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--preset", "huge"]) == 2
    assert "--preset" in capsys.readouterr().err


def test_sample_needs_run_dir(tmp_path, capsys):
    assert main(["sample", "--out", str(tmp_path / "o")]) == 2
    assert "RUN_DIR" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_help_mentions_every_option(capsys):
    for cmd in ("train", "sample", "info", "data", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out
