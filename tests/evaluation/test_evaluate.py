"""The evaluation pipeline on real images: metric sanity on real data (real-vs-real near zero,
monotone in corruption strength), ``limner eval`` on a run and on a folder, the reference cache,
and evaluation during training with the best checkpoint kept past retention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from limner.cli.main import main
from limner.data.dataset import load_dataset
from limner.evaluation.evaluate import EvalOptions, EvalSamples, score_samples
from limner.evaluation.metrics import fid, kid
from limner.evaluation.stats import reference_stats
from limner.evaluation.trained import load_extractor, train_extractor

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "data" / "emoji-demo"


# ---------------------------------------------------------------------------------------------
# Metric sanity on real data (Fashion-MNIST, with a classifier limner trains)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist(shared_data, tmp_path_factory):
    return load_dataset(shared_data / "fashion-mnist", 28, limit=2000, progress=False,
                        cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def fmnist_extractor(fmnist, tmp_path_factory):
    folder = train_extractor(fmnist, tmp_path_factory.mktemp("ex") / "clf", kind="classifier", steps=200,
                             batch_size=32, widths=(16, 32, 64), progress=False)
    return load_extractor(folder)


def _noisy(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).round().astype(np.uint8)


def _blurred(images: np.ndarray, radius: int) -> np.ndarray:
    if radius == 0:
        return images
    x = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float()
    k = 2 * radius + 1
    x = F.avg_pool2d(F.pad(x, (radius,) * 4, mode="replicate"), k, stride=1)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_real_vs_real_is_near_zero_and_corruption_is_far(fmnist, fmnist_extractor):
    a, b = fmnist.images[:1000], fmnist.images[1000:2000]
    fa, fb = fmnist_extractor.features(a), fmnist_extractor.features(b)
    noisy = fmnist_extractor.features(_noisy(b, 128.0))
    same, corrupt = fid(fa, fb), fid(fa, noisy)
    assert same < 0.1 * corrupt, (same, corrupt)  # FID's own small-sample bias keeps `same` above 0
    k_mean, k_std = kid(fa, fb, num_subsets=50, subset_size=500)
    assert abs(k_mean) < max(3 * k_std, 1e-3), (k_mean, k_std)  # unbiased: zero within noise
    assert kid(fa, noisy, num_subsets=50, subset_size=500)[0] > 5 * max(k_std, 1e-6)


@pytest.mark.parametrize("corrupt,levels", [(_noisy, [0.0, 32.0, 64.0, 128.0]), (_blurred, [0, 1, 2, 3])])
def test_fid_grows_monotonically_with_corruption(fmnist, fmnist_extractor, corrupt, levels):
    ref = fmnist_extractor.features(fmnist.images[:1000])
    b = fmnist.images[1000:2000]
    values = [fid(ref, fmnist_extractor.features(corrupt(b, level))) for level in levels]
    assert all(x < y for x, y in zip(values, values[1:])), values


# ---------------------------------------------------------------------------------------------
# The pipeline on the bundled emoji (no ../shared needed)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji(tmp_path_factory):
    return load_dataset(DEMO_DATA, 16, progress=False, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def emoji_extractor_dir(emoji, tmp_path_factory) -> Path:
    return train_extractor(emoji, tmp_path_factory.mktemp("ex") / "contrastive", kind="contrastive", steps=15,
                           batch_size=32, progress=False)


def test_copies_of_training_images_are_flagged_as_memorised(emoji, emoji_extractor_dir, tmp_path):
    extractor = load_extractor(emoji_extractor_dir)
    copies = torch.from_numpy(emoji.images[:8]).permute(0, 3, 1, 2)
    noise = torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    samples = EvalSamples(torch.cat([copies, noise]))
    ev = score_samples(samples, emoji, extractor, EvalOptions(num=16, kid_subset_size=16), cache_dir=tmp_path)
    mem = ev.memorization
    assert np.all(mem.ratio_pixel[:8] == 0) and np.all(mem.ratio_pixel[8:] > 0.5)
    rows = ev.reference.indices[mem.nn_index_pixel[:8]]
    assert np.array_equal(emoji.images[rows], emoji.images[:8])
    assert ev.result["metrics"]["near_copy_share_pixel"] == pytest.approx(0.5)
    assert set(mem.worst(8).tolist()) == set(range(8))


def test_reference_statistics_are_cached_by_content(emoji, emoji_extractor_dir, tmp_path):
    extractor = load_extractor(emoji_extractor_dir)
    first = reference_stats(emoji, extractor, cache_dir=tmp_path)
    files = list((tmp_path / "reference").glob("*.npz"))
    assert len(files) == 1 and first.key in files[0].name
    again = reference_stats(emoji, extractor, cache_dir=tmp_path)
    assert np.array_equal(first.sigma, again.sigma) and again.count == len(emoji)
    files[0].write_bytes(b"not an npz")  # a damaged cache is recomputed, not trusted
    third = reference_stats(emoji, extractor, cache_dir=tmp_path)
    assert np.allclose(third.mu, first.mu)


@pytest.fixture(scope="module")
def tiny_run(tiny_data, cli, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    cli("train", str(tiny_data), "--out", str(tmp / "run"), "--preset", "tiny", "--resolution", "16",
        "--steps", "4", "--batch-size", "4", "--save-every", "2", "--sample-every", "0", "--no-progress",
        cache=tmp / "cache")
    return tmp / "run"


def test_limner_eval_on_a_run_writes_result_and_report(tiny_run, tiny_data, emoji_extractor_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", str(tiny_run), "--data", str(tiny_data), "--num", "12", "--steps", "2",
                 "--extractor", str(emoji_extractor_dir), "--kid-subset-size", "12", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    m = result["metrics"]
    for key in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "near_copy_share"):
        assert np.isfinite(m[key]), key
    assert result["extractor"]["id"].startswith("limner-contrastive-v1-")
    assert result["samples"]["count"] == 12 and result["source"]["step"] == 4
    assert result["source"]["sampling"]["steps"] == 2 and result["source"]["sampling"]["seed"] == 0
    assert result["versions"]["limner"] and result["reference"]["count"] == 12
    from PIL import Image
    with Image.open(out / "report.png") as report:
        assert report.width > 200 and report.height > 300
    assert "FID" in capsys.readouterr().out


def test_bf16_eval_samples_under_autocast_and_says_so(tiny_run, tiny_data):
    from limner.evaluation.evaluate import EvalOptions, sample_for_eval
    from limner.generation.pipeline import load_run
    from limner.data.dataset import load_dataset

    loaded = load_run(tiny_run)
    dataset = load_dataset(tiny_data, 16)
    runs = {p: sample_for_eval(loaded.family, dataset, EvalOptions(num=4, steps=2, precision=p), progress=False)
            for p in ("fp32", "bf16")}
    assert not torch.equal(runs["fp32"].images, runs["bf16"].images)
    assert (runs["fp32"].images.float() - runs["bf16"].images.float()).abs().mean() < 8
    assert EvalOptions(precision="bf16").sampling()["precision"] == "bf16"


def test_limner_eval_is_reproducible(tiny_run, tiny_data, emoji_extractor_dir, tmp_path):
    outs = []
    for name in ("a", "b"):
        main(["eval", str(tiny_run), "--data", str(tiny_data), "--num", "8", "--steps", "2", "--seed", "5",
              "--extractor", str(emoji_extractor_dir), "--kid-subset-size", "8", "--out", str(tmp_path / name)])
        outs.append(json.loads((tmp_path / name / "result.json").read_text())["metrics"])
    assert outs[0] == outs[1]


def test_limner_eval_scores_a_folder_of_images(tiny_data, emoji_extractor_dir, tmp_path):
    out = tmp_path / "eval"
    code = main(["eval", "--images", str(tiny_data / "images"), "--data", str(tiny_data), "--resolution", "16",
                 "--extractor", str(emoji_extractor_dir), "--kid-subset-size", "12", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["fid"] < 1e-6  # the training images themselves
    assert result["metrics"]["near_copy_share_pixel"] == 1.0


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--data", "{data}", "--out", "{out}"], "RUN_DIR"),
    (["eval", "{run}", "--images", "{data}", "--data", "{data}", "--out", "{out}"], "RUN_DIR"),
    (["eval", "{run}", "--data", "{data}/missing", "--out", "{out}"], "--data"),
    (["eval", "{run}", "--data", "{data}", "--extractor", "inception", "--out", "{out}"], "--inception"),
    (["eval", "{run}", "--data", "{data}", "--extractor", "{data}", "--out", "{out}"], "extractor"),
    # generation options are the run family's, checked as limner sample checks them (a diffusion run)
    (["eval", "{run}", "--data", "{data}", "--temperature", "1", "--out", "{out}"],
     "--temperature: a diffusion run takes no temperature option"),
    (["eval", "{run}", "--data", "{data}", "--truncation", "0.5", "--out", "{out}"], "--truncation"),
    (["eval", "--images", "{data}", "--data", "{data}", "--steps", "4", "--out", "{out}"], "--steps"),
])
def test_eval_usage_errors_name_the_argument(tiny_run, tiny_data, tmp_path, capsys, argv, needle):
    argv = [a.format(data=tiny_data, out=tmp_path / "o", run=tiny_run) for a in argv]
    assert main(argv) == 2  # README: bad arguments exit with code 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_eval_refuses_a_bad_option_before_reading_the_data(tiny_run, tmp_path, monkeypatch):
    """The option check comes right after the run is loaded: no dataset is read, no extractor
    trained, for an option the family does not take."""
    import limner.data.dataset as datasets
    from limner.errors import UsageError
    from limner.evaluation.evaluate import EvalTarget, evaluate_run

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the data was read"))
    with pytest.raises(UsageError) as exc:
        evaluate_run(tiny_run, EvalTarget(data=tmp_path, out=tmp_path / "o"),
                     EvalOptions(num=4, options={"top_k": 5}))
    assert exc.value.field == "top_k" and "diffusion" in str(exc.value)


def test_eval_sampling_passes_the_familys_own_options(tiny_data, monkeypatch):
    """A token family's options reach its generate, converted by its declaration, and a value
    out of range is refused naming the option."""
    from limner.conditioning import CondKind
    from limner.errors import UsageError
    from limner.evaluation.evaluate import sample_for_eval
    from limner.models.transformer.family import AutoregressiveFamily

    seen = []

    class Stub:  # the declaration and the generate of an autoregressive run, without a model
        name, declaration, cond_kind = "autoregressive", AutoregressiveFamily.declaration, CondKind.none

        def modules(self):
            return {}

        def generate(self, request):
            seen.append(request)
            return type("Out", (), {"images": torch.zeros(len(request.seeds), 3, 16, 16, dtype=torch.uint8)})()

    dataset = load_dataset(tiny_data, 16)
    opts = EvalOptions(num=3, batch_size=2, cfg=2, options={"top_k": "7", "temperature": 0.5})
    samples = sample_for_eval(Stub(), dataset, opts, progress=False)
    assert len(samples.images) == 3 and [len(r.seeds) for r in seen] == [2, 1]
    assert all(r.options == {"top_k": 7, "temperature": 0.5} and r.cfg == 2.0 for r in seen)
    assert EvalOptions(options={"top_k": 7}).sampling()["options"] == {"top_k": 7}
    with pytest.raises(UsageError) as exc:
        sample_for_eval(Stub(), dataset, EvalOptions(num=1, options={"top_p": 1.5}), progress=False)
    assert exc.value.field == "top_p"
    with pytest.raises(UsageError) as exc:
        sample_for_eval(Stub(), dataset, EvalOptions(num=1, steps=4), progress=False)
    assert exc.value.field == "steps" and "autoregressive run takes no steps" in str(exc.value)


def test_train_extractor_cli_names_weights_by_hash(tiny_data, tmp_path, capsys):
    out = tmp_path / "ex"
    assert main(["eval", "train-extractor", str(tiny_data), "--kind", "contrastive", "--resolution", "16",
                 "--steps", "3", "--batch-size", "8", "--out", str(out)]) == 0
    meta = json.loads((out / "extractor.json").read_text())
    assert meta["kind"] == "contrastive" and len(meta["weights_sha256"]) == 64
    assert load_extractor(out).digest == meta["weights_sha256"]


# ---------------------------------------------------------------------------------------------
# Evaluation during training
# ---------------------------------------------------------------------------------------------


def test_eval_during_training_logs_metrics_and_keeps_best(tiny_data, emoji_extractor_dir, tmp_path):
    from limner.workflows import TrainOptions, train

    run = tmp_path / "run"
    train(TrainOptions(data=tiny_data, out=run, preset="tiny", resolution=16, progress=False,
                       cache_dir=tmp_path / "cache", eval_every=2, eval_num=8,
                       extractor=str(emoji_extractor_dir),
                       train={"steps": 6, "batch_size": 4, "sample_every": 0, "save_every": 2, "keep_last": 1}))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval/fid" in x]
    assert [x["step"] for x in evals] == [2, 4, 6]
    best = json.loads((run / "eval" / "best.json").read_text())
    assert best["metric"] == "fid" and best["value"] == min(x["eval/fid"] for x in evals)
    assert best["step"] in (2, 4, 6) and sorted(p.name for p in (run / "eval").glob("step_*.json")) == [
        "step_000002.json", "step_000004.json", "step_000006.json"]
    best_dir = run / "checkpoints" / "best"
    assert (best_dir / "manifest.json").is_file() and (best_dir / "model_ema.safetensors").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")] == ["step_000006"]
    from limner.training.checkpoint import verify_checkpoint
    verify_checkpoint(best_dir)
    from limner.generation.pngmeta import read_record
    assert main(["sample", str(run), "--step", "best", "--prompt", "green heart", "--steps", "2", "--seed", "1",
                 "--num", "1", "--out", str(tmp_path / "s")]) == 0
    png = next((tmp_path / "s").glob("*.png"))
    assert read_record(png).step == best["step"]
    assert main(["sample", "--from-image", str(png), "--out", str(tmp_path / "again")]) == 0  # found via best/
    again = next((tmp_path / "again").glob("*.png"))
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(again)))


def test_eval_every_must_be_a_multiple_of_save_every(tiny_data, tmp_path):
    from limner.errors import UsageError
    from limner.workflows import TrainOptions, train

    with pytest.raises(UsageError, match="--eval-every"):
        train(TrainOptions(data=tiny_data, out=tmp_path / "run", preset="tiny", resolution=16, progress=False,
                           cache_dir=tmp_path / "cache", eval_every=3,
                           train={"steps": 6, "batch_size": 4, "sample_every": 0, "save_every": 2}))


def test_text_runs_get_text_alignment_from_a_clip_extractor(tiny_run, tiny_data, tmp_path):
    from limner.evaluation.alignment import train_clip

    data = load_dataset(tiny_data, 16, progress=False, cache_dir=tmp_path / "cache")
    clip = train_clip(data, tmp_path / "clip", steps=4, batch_size=8, progress=False)
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_run), "--data", str(tiny_data), "--num", "8", "--steps", "2",
                 "--extractor", str(clip), "--kid-subset-size", "8", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    align = result["text_alignment"]
    assert align["num_images"] == 8 and 0 <= align["retrieval_top1"] <= 1
    assert result["metrics"]["clip_score"] == pytest.approx(align["clip_score"])
    assert result["extractor"]["id"].startswith("limner-clip-v1-")


def test_folder_resolution_is_the_first_decodable_image_side(tiny_data, tmp_path):
    from limner.errors import DataError, UsageError
    from limner.evaluation.evaluate import _folder_resolution

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a_broken.png").write_bytes(b"not a png")
    from PIL import Image
    Image.new("RGB", (40, 24)).save(folder / "b.png")
    assert _folder_resolution(folder) == 24  # the broken first file is passed over
    (folder / "b.png").unlink()
    with pytest.raises(DataError, match="no decodable image"):
        _folder_resolution(folder)
    np.savez(tmp_path / "rows.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(UsageError, match="--resolution"):
        _folder_resolution(tmp_path / "rows.npz")
