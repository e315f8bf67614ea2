"""``limner train --set KEY=VALUE``: any config field of a new run, typed and checked against the
value it replaces, with errors that name the key; the saved config.json holds the result."""

from __future__ import annotations

import json

import pytest

from limner.cli.main import main
from limner.errors import UsageError
from limner.overrides import merge_overrides, parse_assignment, split_sections


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train.lr=1e-3", ("train.lr", 1e-3)),
        ("train.ema_decay=null", ("train.ema_decay", None)),
        ("train.hflip=true", ("train.hflip", True)),
        ("train.betas=[0.9, 0.999]", ("train.betas", [0.9, 0.999])),
        ("family.sampler=heun", ("family.sampler", "heun")),  # not JSON: the text itself
        ('family.sampler="heun"', ("family.sampler", "heun")),
        ("family.unet.dropout = 0.1", ("family.unet.dropout", 0.1)),
        ("family.prompt=a=b", ("family.prompt", "a=b")),  # only the first = splits
    ],
)
def test_parse_assignment(text, expected):
    assert parse_assignment(text) == expected


@pytest.mark.parametrize(
    "text, needle",
    [("train.lr", "KEY=VALUE"), ("=1", "KEY=VALUE"), ("lr=1", "train. or family."),
     ("model.lr=1", "train. or family."), ("train=1", "train. or family."),
     ("train..lr=1", "dotted"), ("train.lr=NaN", "finite"), ("train.lr=Infinity", "finite")],
)
def test_parse_assignment_refuses(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_assignment(text)


def test_split_sections_nests_and_refuses_duplicates():
    got = split_sections([("family.unet.dropout", 0.1), ("family.P_mean", -1.0), ("train.lr", 0.1)])
    assert got == {"train": {"lr": 0.1}, "family": {"unet": {"dropout": 0.1}, "P_mean": -1.0}}
    with pytest.raises(UsageError, match="more than once"):
        split_sections([("train.lr", 0.1), ("train.lr", 0.2)])
    with pytest.raises(UsageError, match="together with --set family.unet"):
        split_sections([("family.unet", {}), ("family.unet.dropout", 0.1)])


BASE = {"lr": 0.1, "steps": 10, "flag": False, "name": "a", "opt": None, "sizes": [1, 2],
        "net": {"width": 8, "depth": 2, "inner": {"p": 0.5}}}


def test_merge_checks_types_and_keeps_the_rest():
    out = merge_overrides(BASE, {"lr": 1, "steps": 20.0, "opt": 3, "net": {"inner": {"p": 1}}},
                          where="family")
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)
    assert out["steps"] == 20 and isinstance(out["steps"], int)
    assert out["opt"] == 3 and out["name"] == "a"
    assert out["net"] == {"width": 8, "depth": 2, "inner": {"p": 1.0}}
    assert BASE["net"]["inner"]["p"] == 0.5  # the base is not modified


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"lrr": 1.0}, r"family\.lrr: unknown setting 'lrr' \(known in family: flag, lr, name"),
        ({"net": {"widht": 1}}, r"family\.net\.widht: unknown setting .*known in family\.net: depth, inner, width"),
        ({"steps": 0.5}, r"family\.steps: expected an integer"),
        ({"steps": True}, r"family\.steps: expected an integer"),
        ({"lr": "fast"}, r"family\.lr: expected a number"),
        ({"flag": 1}, r"family\.flag: expected true or false"),
        ({"name": 3}, r"family\.name: expected text"),
        ({"sizes": 3}, r"family\.sizes: expected a list"),
        ({"net": 3}, r"family\.net: is a group of settings"),
        ({"lr": {"x": 1}}, r"family\.lr: is a single value"),
        ({"net": {"depth": 3}}, r"family\.net\.depth: not settable \(fixed by the data\)"),
    ],
)
def test_merge_errors_name_the_key(overrides, needle):
    with pytest.raises(UsageError, match=needle):
        merge_overrides(BASE, overrides, where="family", fixed={"net.depth": "fixed by the data"})


# ------------------------------------------------------------------ through the CLI


@pytest.fixture
def data(tmp_path, noise_images):
    return noise_images(tmp_path / "data", seed=0)


def _train(data, out, *extra):
    return main(["train", str(data), "--out", str(out), "--preset", "tiny", "--resolution", "16",
                 "--steps", "1", "--batch-size", "4", "--sample-every", "0", "--no-progress",
                 "--cache-dir", str(data.parent / "cache"), *extra])


@pytest.mark.parametrize(
    "family, sets, check",
    [
        ("diffusion", ["family.P_mean=-0.8", "family.unet.dropout=0.1", "family.sampler=heun"],
         lambda f: (f["P_mean"], f["net"]["dropout"], f["sampler"]) == (-0.8, 0.1, "heun")),
        ("gan", ["family.r1_gamma=1", "family.generator.mapping_layers=1"],
         lambda f: (f["r1_gamma"], f["generator"]["mapping_layers"]) == (1.0, 1)),
        ("vae", ["family.beta=0.5", "family.recon_loss=l1"],
         lambda f: (f["beta"], f["recon_loss"]) == (0.5, "l1")),
    ],
)
def test_set_reaches_config_json(tmp_path, data, family, sets, check):
    out = tmp_path / "run"
    argv = ["--family", family, "--set", "train.ema_decay=0.5", "--set", "train.warmup_steps=0"]
    for item in sets:
        argv += ["--set", item]
    assert _train(data, out, *argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert check(config["family"]["config"])
    assert config["train"]["ema_decay"] == 0.5 and config["train"]["warmup_steps"] == 0


def _exit_code(argv_tail, data, out):
    try:
        return _train(data, out, *argv_tail)
    except SystemExit as exc:  # argparse refuses a malformed KEY=VALUE itself
        return exc.code


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--set", "family.P_meen=-1"], "--set family.P_meen: unknown setting 'P_meen'"),
        (["--set", "family.unet.in_channels=4"], "--set family.unet.in_channels: not settable (follows the data)"),
        (["--set", "family.encoder.dim=8"], "--set family.encoder: not settable"),
        (["--set", "family.resolution=32"], "--set family.resolution: not settable (use --resolution)"),
        (["--set", "family.sampler=nope"], "family.sampler: must be one of"),
        (["--set", "family.cond_drop=2"], "family.cond_drop: must be in [0, 1]"),
        (["--set", "train.ema_decay=2"], "ema_decay"),
        (["--set", "train.warmup_steps=1.5"], "--set train.warmup_steps: expected an integer"),
        (["--set", "train.device=cuda"], "--set train.device: not settable (use --device)"),
        (["--set", "train.lr=0.1", "--lr", "0.2"], "--set train.lr: also given as --lr"),
        (["--set", "lr=0.1"], "--set: 'lr' must start with train. or family."),
    ],
)
def test_bad_set_exits_2_naming_the_key(tmp_path, data, capsys, argv, needle):
    out = tmp_path / "run"
    assert _exit_code(argv, data, out) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1, err
    assert not (out / "config.json").exists()


def test_resume_takes_train_settings_and_refuses_model_ones(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert _train(data, out) == 0
    assert _train(data, out, "--resume", "--steps", "2", "--set", "train.save_every=7") == 0
    assert json.loads((out / "config.json").read_text())["train"]["save_every"] == 7
    capsys.readouterr()
    # a training setting that would break exact resume is refused by the trainer, naming it
    assert _train(data, out, "--resume", "--steps", "3", "--set", "train.ema_decay=0.9") == 2
    assert "train.ema_decay" in capsys.readouterr().err
    assert _train(data, out, "--resume", "--steps", "3", "--set", "family.unet.dropout=0.2") == 2
    assert "--set family.unet.dropout: a run's model settings are fixed" in capsys.readouterr().err


def test_latent_diffusion_sets_its_denoiser_not_its_frozen_vae(tmp_path, data, capsys):
    vae = tmp_path / "vae"
    assert _train(data, vae, "--family", "vae", "--cond", "none") == 0
    ldm = ["--family", "latent-diffusion", "--vae", str(vae)]
    assert _train(data, tmp_path / "bad", *ldm, "--set", "family.vae.beta=1") == 2
    assert "--set family.vae: not settable (a frozen copy of the --vae run" in capsys.readouterr().err
    assert _train(data, tmp_path / "bad", *ldm, "--set", "family.diffusion.P_meen=1") == 2
    assert "--set family.diffusion.P_meen: unknown setting" in capsys.readouterr().err
    out = tmp_path / "ldm"
    assert _train(data, out, *ldm, "--set", "family.diffusion.P_mean=-1", "--set",
                  "family.diffusion.sigma_data=0.8") == 0
    config = json.loads((out / "config.json").read_text())["family"]["config"]["diffusion"]
    assert (config["P_mean"], config["sigma_data"]) == (-1.0, 0.8)
