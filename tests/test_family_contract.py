"""One contract for every registered family, tested once, with no per-family branches.

Through the CLI, in new processes as a user runs it, on a handful of real captioned images: a
tiny config trains 20 steps with finite losses and the run-folder layout; stopping mid-epoch and
resuming in a new process gives bitwise the weights of a straight run; sampling with a seed is
deterministic; every PNG carries its record, and ``--from-image`` regenerates it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from limner.models.registry import FAMILIES, declaration

STEPS, STOP = 20, 13  # 12 images / batch 4 = 3 steps an epoch: 13 is mid-epoch


def train_args(family: str, data: Path, out: Path, steps: int) -> list[str]:
    return [
        "train", str(data), "--family", family, "--out", str(out), "--preset", "tiny",
        "--resolution", "16", "--steps", str(steps), "--batch-size", "4", "--save-every", "5",
        "--sample-every", "10", "--seed", "3", "--no-progress",
    ]


def few_steps(family: str, steps: int) -> dict[str, int]:
    """``{"steps": steps}`` where the family declares a steps option (sampling steps, unmasking
    steps), else nothing: the declaration, not the family's name, decides."""
    return {"steps": steps} if declaration(family).option("steps") else {}


def flags(options: dict[str, int]) -> list[str]:
    return [a for name, value in options.items() for a in ("--" + name.replace("_", "-"), str(value))]


def checkpoint_tensors(run: Path) -> dict[str, np.ndarray]:
    """Every tensor of the newest checkpoint (all modules, training and EMA weights)."""
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        out.update({f"{f.stem}.{k}": v for k, v in load_file(f).items()})
    return out


# Every registered family, plus the other backbone a family can be built with (the DiT behind
# the EDM denoiser) and bfloat16 autocast training (on the CPU the U-Net then runs channels-last
# through the compiled bfloat16 group norm and Winograd kernels, whose results must not depend
# on a restart either): the same contract, with the setting that selects it.
CASES = [(family, ()) for family in sorted(FAMILIES)] + [("diffusion", ("--set", "family.backbone=dit")),
                                                         ("diffusion", ("--precision", "bf16"))]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "+".join([c[0], *c[1][1::2]]))
def straight(request, tiny_data, cli, tmp_path_factory) -> tuple[str, Path, list[str]]:
    """A run of each family trained STEPS straight, plus the extra train arguments it needs.

    A family that builds on another's run declares it (``declaration.needs``, with the train
    arguments that make a suitable run); that run is trained first and passed as ``--option RUN``."""
    family, settings = request.param
    tmp = tmp_path_factory.mktemp(f"straight-{family}")
    extra: list[str] = list(settings)
    for need in declaration(family).needs:
        base = tmp / f"base-{need.option}"
        cli(*train_args(need.family, tiny_data, base, 4), *need.suggested_args("tiny"), cache=tmp / "cache")
        extra += [f"--{need.option}", str(base)]
    cli(*train_args(family, tiny_data, tmp / "run", STEPS), *extra, cache=tmp / "cache")
    return family, tmp / "run", extra


def test_trains_with_finite_loss_and_full_run_folder(straight):
    family, run, _ = straight
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["family"]["name"] == family and cfg["limner_version"]
    assert (run / "checkpoints" / "latest").read_text().strip().endswith(str(STEPS))
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses and np.all(np.isfinite(losses))
    assert (run / "samples" / f"step_{STEPS:06d}.png").is_file()
    assert list((run / "tensorboard").rglob("events.*"))
    assert all(np.isfinite(v).all() for v in checkpoint_tensors(run).values() if v.dtype.kind == "f")


def test_resume_in_a_new_process_equals_continuing(straight, tiny_data, cli, tmp_path):
    family, reference, extra = straight
    run = tmp_path / "run"
    cli(*train_args(family, tiny_data, run, STOP), *extra, cache=tmp_path / "cache")
    cli(*train_args(family, tiny_data, run, STEPS), "--resume", cache=tmp_path / "cache")
    # each process also logs its last step: a resume that restarted at step 0 with the same
    # seed would reach the same weights, but drop the STOP line and log the straight run's steps
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    straight_logged = [json.loads(x)["step"] for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted({*straight_logged, STOP}), f"{family}: resumed run logged steps {logged}"
    a, b = checkpoint_tensors(reference), checkpoint_tensors(run)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), f"{family}: {key} differs after resume"


def test_sampling_is_deterministic_recorded_and_replayable(straight, cli, tmp_path):
    family, run, _ = straight
    args = ["sample", str(run), "--prompt", "large red circle", "--num", "3", "--seed", "11",
            *flags(few_steps(family, 4))]
    cli(*args, "--out", str(tmp_path / "a"), cache=tmp_path / "cache")
    cli(*args, "--out", str(tmp_path / "b"), cache=tmp_path / "cache")
    files_a, files_b = sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png"))
    assert len(files_a) == 3
    for fa, fb in zip(files_a, files_b):
        assert np.array_equal(np.asarray(Image.open(fa)), np.asarray(Image.open(fb)))
    record = json.loads(cli("info", "--json", str(files_a[1]), cache=tmp_path / "cache").stdout)
    assert record["family"] == family and record["seed"] == 12 and record["prompt"] == "large red circle"
    assert record["step"] == STEPS and record["model_hash"]
    assert record["limner_version"] and record["torch_version"] and record["python_version"]
    assert record["device"] == "cpu"
    with Image.open(files_a[1]) as im:
        assert "Seed: 12" in im.text["parameters"]
    cli("sample", "--from-image", str(files_a[1]), "--out", str(tmp_path / "c"), cache=tmp_path / "cache")
    (again,) = list((tmp_path / "c").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(files_a[1])))


def test_interpolation_ends_at_its_two_endpoints(straight, tmp_path, cli):
    """Frame 0 is (seed A, prompt P) and the last frame (seed B, prompt Q), as plain sampling
    draws them; the middle differs from both. GIF written through the CLI."""
    from limner.generation.interpolate import interpolate
    from limner.generation.pipeline import generate
    from limner.generation.request import GenerationRequest

    family, run, _ = straight
    frames = interpolate(run, (1, 2), 5, prompts=("large red circle", "green heart"), **few_steps(family, 4))
    assert len(frames) == 5
    ends = [generate(GenerationRequest(run=str(run), prompt=p, seed=s, num=1, **few_steps(family, 4)))[0].image
            for s, p in ((1, "large red circle"), (2, "green heart"))]
    as_int = lambda im: np.asarray(im, dtype=np.int16)  # noqa: E731
    assert np.abs(as_int(frames[0]) - as_int(ends[0])).max() <= 1
    assert np.abs(as_int(frames[-1]) - as_int(ends[1])).max() <= 1
    assert not np.array_equal(as_int(frames[2]), as_int(frames[0]))
    out = tmp_path / "walk.gif"
    cli("interpolate", str(run), "--seeds", "1", "2", "--prompts", "green heart", "green heart",
        "--frames", "3", *flags(few_steps(family, 2)), "--out", str(out), cache=tmp_path / "cache")
    with Image.open(out) as im:
        assert im.n_frames == 3
