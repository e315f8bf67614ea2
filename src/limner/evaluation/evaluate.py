"""``limner eval`` and the in-training evaluation: samples in, one JSON-able result out.

The pipeline is the same for a run folder, for a folder of images from anywhere, and for the
trainer's periodic evaluation, so the three give numbers on one scale:

    samples (uint8 [N, C, H, W]) -> extractor features (+ logits) -> metrics against the cached
    reference of the training data -> memorization against the same reference rows
    -> text alignment when the samples came from prompts and a CLIP-style extractor exists.

Conditioning follows the data: a text run is sampled with captions drawn (seeded) from the
training captions, a class run with labels drawn from the label distribution, so FID compares
like with like (the conditional model against the data it was asked to reproduce).
Metric references: FID (Heusel et al. 2017), KID (Bińkowski et al. 2018), improved
precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020), Inception
Score (Salimans et al. 2016); why small-sample FID needs care: Chong & Forsyth 2020.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from limner import __version__
from limner.conditioning.base import CondKind
from limner.data.cache import default_cache_dir
from limner.data.dataset import ImageDataset
from limner.errors import DataError, UsageError
from limner.evaluation import metrics as M
from limner.evaluation.features import FeatureExtractor, as_nchw_uint8
from limner.evaluation.memorization import MemorizationResult, memorization, pixel_vectors
from limner.evaluation.stats import ReferenceStats, reference_stats
from limner.generation.precision import precision_context
from limner.models.request import BatchRequest

log = logging.getLogger(__name__)

RESULT_VERSION = 1
METRIC_NAMES = ("fid", "kid", "precision", "recall", "density", "coverage", "inception_score",
                "near_copy_share", "clip_score", "retrieval_top1")
LOWER_IS_BETTER = {"fid", "kid", "near_copy_share"}

__all__ = ["EvalOptions", "EvalSamples", "Evaluation", "checked_options", "score_samples", "sample_for_eval",
           "eval_conditions", "resolve_extractor", "LOWER_IS_BETTER"]


@dataclass
class EvalOptions:
    """How to sample and score. Sampler fields None = the run's defaults; ``options`` holds the
    further generation options the run's family declares (``temperature``, ``top_k``...). All of
    them are checked against the family's declaration before sampling (:func:`checked_options`)."""

    num: int = 1000
    batch_size: int = 64
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    truncation: float | None = None
    sigma_max: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # or "bf16": sample under bfloat16 autocast
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    dc_k: int = 5
    near_copy_threshold: float = 1 / 3

    def sampling(self) -> dict[str, Any]:
        return {"num": self.num, "seed": self.seed, "sampler": self.sampler, "steps": self.steps,
                "cfg": self.cfg, "truncation": self.truncation, "sigma_max": self.sigma_max,
                "options": dict(self.options), "precision": self.precision, "batch_size": self.batch_size}


def checked_options(family: Any, opts: EvalOptions) -> EvalOptions:
    """``opts`` with its generation options checked against the family's declaration, the check
    ``limner sample`` makes (``limner.generation.pipeline.check_options``): an option the family
    does not take, or a bad value, is a UsageError naming the option."""
    from limner.generation.pipeline import check_options

    return check_options(family, opts)


@dataclass
class EvalSamples:
    """Generated (or user-supplied) images and the conditions they were made for."""

    images: torch.Tensor                 # uint8 [N, C, H, W]
    prompts: list[str] | None = None
    labels: list[int] | None = None
    seconds: float = 0.0


@dataclass
class Evaluation:
    """Everything one evaluation produced; ``result`` is what goes into result.json."""

    result: dict[str, Any]
    samples: EvalSamples
    memorization: MemorizationResult
    reference: ReferenceStats


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def eval_conditions(dataset: ImageDataset, cond: CondKind, num: int, seed: int,
                    prompts: list[str] | None = None) -> tuple[list[str] | None, list[int] | None]:
    """Prompts or labels for ``num`` samples: given prompts cycled, else drawn from the data."""
    rng = np.random.default_rng(seed)
    if cond == CondKind.text:
        if prompts:
            return [prompts[i % len(prompts)] for i in range(num)], None
        captions = [c for c in (dataset.captions or []) if c.strip()]
        if not captions:
            raise UsageError("--data: the run is text-conditioned but the dataset has no captions; pass --prompts FILE")
        return [captions[i] for i in rng.integers(0, len(captions), size=num)], None
    if cond == CondKind.class_:
        if dataset.labels is None:
            raise UsageError("--data: the run is class-conditioned but the dataset has no labels")
        return None, [int(dataset.labels[i]) for i in rng.integers(0, len(dataset), size=num)]
    return None, None


def sample_for_eval(family: Any, dataset: ImageDataset, opts: EvalOptions, *, prompts: list[str] | None = None,
                    progress: bool = True) -> EvalSamples:
    """``opts.num`` samples from a family (weights already in place), seeds seed..seed+num-1."""
    opts = checked_options(family, opts)
    texts, labels = eval_conditions(dataset, family.cond_kind, opts.num, opts.seed, prompts)
    start, chunks = time.perf_counter(), []
    bar = tqdm(total=opts.num, desc="sampling", unit="img", disable=not progress, leave=False)
    for a in range(0, opts.num, opts.batch_size):
        b = min(a + opts.batch_size, opts.num)
        request = BatchRequest(seeds=list(range(opts.seed + a, opts.seed + b)),
                               prompts=texts[a:b] if texts else None, labels=labels[a:b] if labels else None,
                               sampler=opts.sampler, steps=opts.steps, cfg=opts.cfg, truncation=opts.truncation,
                               sigma_max=opts.sigma_max, options=dict(opts.options))
        with torch.no_grad(), precision_context(opts.precision, _device_of(family)):
            chunks.append(family.generate(request).images.cpu())
        bar.update(b - a)
    bar.close()
    return EvalSamples(torch.cat(chunks), texts, labels, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _device_of(family: Any) -> torch.device:
    for module in family.modules().values():
        for p in module.parameters():
            return p.device
    return torch.device("cpu")


def score_samples(samples: EvalSamples, dataset: ImageDataset, extractor: FeatureExtractor, opts: EvalOptions, *,
                  alignment_model: Any = None, cache_dir: str | os.PathLike | None = None,
                  reference: ReferenceStats | None = None) -> Evaluation:
    """Metrics of ``samples`` against ``dataset`` under ``extractor`` (``reference``: the
    dataset's statistics when the caller already holds them, else loaded from the cache)."""
    start = time.perf_counter()
    ref = reference or reference_stats(dataset, extractor, cache_dir=cache_dir)
    images = _match_channels(samples.images, dataset.channels)
    feats, logits = extractor.features_and_logits(images)
    values = _distribution_metrics(feats, logits, ref, opts)
    mem = memorization(feats, ref.features, gen_pixels=pixel_vectors(images, layout="nchw").astype(np.float32), train_pixels=ref.pixels,
                       threshold=opts.near_copy_threshold, seed=opts.seed)
    values["near_copy_share"] = float(mem.near_copy_share_feature)
    values["near_copy_share_pixel"] = float(mem.near_copy_share_pixel)
    alignment = None
    if alignment_model is not None and samples.prompts:
        from limner.evaluation.alignment import text_alignment
        alignment = text_alignment(alignment_model, images, samples.prompts)
        values["clip_score"] = float(alignment["clip_score"])
        values["retrieval_top1"] = float(alignment["retrieval_top1"])
    result = {
        "metrics": values,
        "extractor": {"id": extractor.extractor_id, "name": extractor.name, "version": extractor.version,
                      "digest": extractor.digest, "dim": extractor.dim},
        "reference": ref.describe(),
        "samples": {"count": int(len(images)), "seconds": round(samples.seconds, 3)},
        "memorization": mem.summary(),
        "text_alignment": alignment,
        "seconds_scoring": round(time.perf_counter() - start, 3),
        "versions": versions(),
    }
    return Evaluation(result, samples, mem, ref)


def _distribution_metrics(feats: np.ndarray, logits: np.ndarray | None, ref: ReferenceStats,
                          opts: EvalOptions) -> dict[str, float]:
    mu, sigma = M.feature_stats(feats)
    kid_mean, kid_std = M.kid(ref.features, feats, num_subsets=opts.kid_subsets,
                              subset_size=opts.kid_subset_size, seed=opts.seed)
    precision, recall = M.precision_recall(ref.features, feats, k=opts.pr_k)
    density, coverage = M.density_coverage(ref.features, feats, k=opts.dc_k)
    out = {"fid": M.frechet_distance(ref.mu, ref.sigma, mu, sigma), "kid": kid_mean, "kid_std": kid_std,
           "precision": precision, "recall": recall, "density": density, "coverage": coverage}
    if logits is not None:
        out["inception_score"], out["inception_score_std"] = M.inception_score(logits, splits=min(10, len(feats)))
    return {k: float(v) for k, v in out.items()}


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey samples scored against RGB data are repeated to RGB; RGB against grey is an error."""
    images = as_nchw_uint8(images)
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise UsageError(f"samples have {images.shape[1]} channels but the dataset has {channels}")


def versions() -> dict[str, str]:
    return {"limner": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "result_format": str(RESULT_VERSION)}


# ---------------------------------------------------------------------------------------------
# Extractors
# ---------------------------------------------------------------------------------------------


def default_extractor_dir(dataset: ImageDataset, kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the automatically trained extractor for this dataset lives in the cache."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "extractors" / f"{dataset.content_hash[:16]}-{kind}"


def resolve_extractor(spec: str | os.PathLike | None, dataset: ImageDataset, *, inception: str | os.PathLike | None = None,
                      device: str = "cpu", cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> tuple[FeatureExtractor, Path | None]:
    """(extractor, its folder or None) for ``spec`` ("inception" or an extractor folder) or, when
    None, the dataset's default extractor: trained on first use (classifier for labels, CLIP-style
    for captions, contrastive otherwise) and cached, so later evaluations of the same dataset
    reuse byte-identical weights."""
    from limner.evaluation.trained import default_kind, load_extractor, train_extractor

    if spec is None and inception is not None:
        spec = "inception"
    if spec is not None:
        folder = None if str(spec) == "inception" else Path(spec)
        return load_extractor(spec, inception=inception, device=device), folder
    kind = default_kind(dataset)
    folder = default_extractor_dir(dataset, kind, cache_dir)
    if not (folder / "extractor.json").is_file():
        log.warning("no --extractor given: training a %s extractor on the dataset once (cached in %s)", kind, folder)
        train_extractor(dataset, folder, kind=kind, device=device, progress=progress)
    return load_extractor(folder, device=device), folder


def alignment_model_for(folder: str | os.PathLike | None, device: str = "cpu") -> Any:
    """The CLIP-style model stored in an extractor folder, None when the folder holds another kind."""
    if folder is None:
        return None
    from limner.evaluation.alignment import load_clip
    from limner.evaluation.extractor_dir import META_FILE

    meta = json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))
    return load_clip(folder, device=device) if meta.get("kind") == "clip" else None


# ---------------------------------------------------------------------------------------------
# limner eval: a run folder or a folder of images
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalTarget:
    """What ``limner eval`` scores and against what."""

    data: Path
    out: Path
    extractor: str | None = None
    inception: Path | None = None
    alignment: Path | None = None
    prompts: list[str] | None = None
    device: str = "cpu"
    cache_dir: Path | None = None
    progress: bool = True
    resolution: int | None = None  # folder evaluation only (default: the images' own size)


def evaluate_run(run_dir: str | os.PathLike, target: EvalTarget, opts: EvalOptions, *,
                 step: int | None = None) -> Evaluation:
    """Sample ``opts.num`` images from a run and score them against ``target.data``."""
    from limner.data.dataset import load_dataset
    from limner.generation.pipeline import load_run

    loaded = load_run(run_dir, step=step, device=target.device)
    opts = checked_options(loaded.family, opts)  # before the data and the extractor are read
    data_cfg = loaded.run_config["data"]
    dataset = load_dataset(target.data, data_cfg["resolution"], channels=data_cfg["channels"],
                           cache_dir=target.cache_dir, progress=target.progress)
    if dataset.content_hash != data_cfg.get("content_hash"):
        log.warning("--data differs from the data the run was trained on; scoring against --data as given")
    extractor, folder = _extractor_for(target, dataset)
    samples = sample_for_eval(loaded.family, dataset, opts, prompts=target.prompts, progress=target.progress)
    source = {"run": str(Path(run_dir).resolve()), "run_id": loaded.run_id, "step": loaded.step,
              "model_hash": loaded.model_hash, "family": loaded.run_config["family"]["name"],
              "data": str(target.data), "sampling": opts.sampling()}
    return _score_and_write(samples, dataset, extractor, folder, target, opts, source)


def evaluate_folder(images_dir: str | os.PathLike, target: EvalTarget, opts: EvalOptions) -> Evaluation:
    """Score a folder of images from anywhere against ``target.data`` (same decode and resize)."""
    from limner.data.dataset import load_dataset

    dataset = load_dataset(target.data, target.resolution or _folder_resolution(images_dir), cache_dir=target.cache_dir, progress=target.progress)
    found = load_dataset(images_dir, dataset.resolution, channels=dataset.channels, cache_dir=target.cache_dir,
                         progress=target.progress)
    extractor, folder = _extractor_for(target, dataset)
    samples = EvalSamples(torch.from_numpy(found.images).permute(0, 3, 1, 2).contiguous(),
                          prompts=found.captions if found.captions and all(found.captions) else None)
    source = {"images": str(Path(images_dir).resolve()), "data": str(target.data), "skipped": len(found.skipped)}
    return _score_and_write(samples, dataset, extractor, folder, target, opts, source)


def _extractor_for(target: EvalTarget, dataset: ImageDataset) -> tuple[FeatureExtractor, Path | None]:
    return resolve_extractor(target.extractor, dataset, inception=target.inception, device=target.device,
                             cache_dir=target.cache_dir, progress=target.progress)


def _score_and_write(samples: EvalSamples, dataset: ImageDataset, extractor: FeatureExtractor, folder: Path | None,
                     target: EvalTarget, opts: EvalOptions, source: dict[str, Any]) -> Evaluation:
    """Score, record where the samples came from, write result.json and report.png."""
    evaluation = score_samples(samples, dataset, extractor, opts, cache_dir=target.cache_dir,
                               alignment_model=alignment_model_for(target.alignment or folder, target.device))
    evaluation.result["source"] = source
    write_outputs(evaluation, dataset, target.out)
    return evaluation


def _folder_resolution(images_dir: str | os.PathLike) -> int:
    """The side the first decodable image of a folder would be centre-cropped to (listed and
    decoded with the loader's own rules, without decoding or caching the whole folder)."""
    from limner.data.arrays import ArraySource
    from limner.data.dataset import decode_file
    from limner.data.sources import scan_source

    source = scan_source(images_dir)
    if isinstance(source, ArraySource):  # IDX / npz rows: no file to read the size from
        raise UsageError("--resolution: needed when --images is an array file (IDX or npz)")
    for item in source.items:
        image, _, _ = decode_file(item.path)
        if image is not None:
            return min(image.size)
    raise DataError(f"--images: no decodable image in {images_dir}")


def write_outputs(evaluation: Evaluation, dataset: ImageDataset, out: Path) -> tuple[Path, Path]:
    """``out/result.json`` and ``out/report.png``."""
    from limner.evaluation.report import write_report
    from limner.runs.layout import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "result.json"
    write_json_atomic(json_path, evaluation.result)
    return json_path, write_report(out / "report.png", evaluation, dataset)
