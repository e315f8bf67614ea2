"""From a run folder to images with records: load, resolve a request, generate, save.

The CLI, the studio and evaluation call these functions; none of them re-implements loading or
sampling. Copying a run folder to another machine is enough to use it here.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from limner import __version__
from limner.errors import CheckpointError, UsageError
from limner.generation.pngmeta import save_png
from limner.generation.precision import precision_context
from limner.generation.request import (
    PRECISION_DTYPES, BatchRequest, GenerationRecord, GenerationRequest, precision_of,
)
from limner.models.base import ProgressCallback
from limner.models.declaration import REQUEST_FIELDS
from limner.models.registry import family_class
from limner.models.weights import load_module_weights
from limner.nn import conv_plan
from limner.nn.conv import cpu_kernel_setting
from limner.nn.conv_plan import Traced
from limner.runs.layout import checkpoint_dirs, find_latest_valid, model_hash, read_run_config

MAX_SEED = 2**63 - 1

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A family with EMA weights loaded from a run folder, ready to generate."""

    family: Any
    run_dir: Path
    run_config: dict[str, Any]
    step: int
    checkpoint: Path
    model_hash: str
    run_id: str
    device: torch.device


@dataclass
class GeneratedImage:
    image: Image.Image
    record: GenerationRecord


def _checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder holds (from its manifest; ``best`` is named by no step)."""
    from limner.runs.layout import read_manifest

    m = re.search(r"(\d+)$", path.name)
    if m is not None:
        return int(m.group(1))
    try:
        return int(read_manifest(path)["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: not a checkpoint directory (expected step_NNNNNN)") from None


def _best_dir(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "best"
    return path if (path / "manifest.json").is_file() else None


def _select_checkpoint(run_dir: Path, step: int | str | None) -> Path:
    """Newest valid checkpoint (None), ``best`` (kept by evaluation during training), or a step;
    a step that retention deleted is still found when it is the best one."""
    if step is None:
        ckpt = find_latest_valid(run_dir)
        if ckpt is None:
            raise CheckpointError(f"{run_dir}: no valid checkpoint in this run folder")
        return ckpt
    best = _best_dir(run_dir)
    if step == "best":
        if best is None:
            raise CheckpointError(f"{run_dir}: no best checkpoint (train with --eval-every to keep one)")
        return best
    for d in checkpoint_dirs(run_dir):
        if _checkpoint_step(d) == step:
            return d
    if best is not None and _checkpoint_step(best) == step:
        return best
    raise CheckpointError(f"{run_dir}: no checkpoint for step {step}")


def load_run(
    run_dir: str | Path, *, step: int | str | None = None, device: str | torch.device = "cpu", ema: bool = True
) -> LoadedRun:
    """Rebuild a run's family from its config.json and load (EMA) weights of a checkpoint."""
    from limner.bundled import resolve_run

    run_dir = resolve_run(run_dir)  # a run folder, or a bundled model's name ("emoji")
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"RUN_DIR: {run_dir} is not a limner run folder (no config.json)")
    run_config = read_run_config(run_dir)
    family = family_class(run_config["family"]["name"]).from_config(run_config["family"]["config"])
    ckpt = _select_checkpoint(run_dir, step)
    for name, module in family.modules().items():
        suffix = "_ema" if ema and name in family.ema_names() else ""
        path = ckpt / f"{name}{suffix}.safetensors"
        if not suffix and name in family.ema_names() and not path.is_file():
            path = ckpt / f"{name}_ema.safetensors"  # an EMA-only checkpoint (a bundled model)
        load_module_weights(module, path)
        module.to(device).eval()
    names = sorted(family.modules())
    return LoadedRun(
        family=family,
        run_dir=run_dir,
        run_config=run_config,
        step=_checkpoint_step(ckpt),
        checkpoint=ckpt,
        model_hash=model_hash(ckpt, names),
        run_id=run_config.get("run_id", run_dir.name),
        device=torch.device(device),
    )


def resolve_seed(seed: int | None, num: int) -> int:
    """A concrete first seed: None or -1 draws one at random (A1111 convention)."""
    if seed is None or seed == -1:
        return secrets.randbelow(2**32)
    if seed < 0 or seed + num - 1 > MAX_SEED:
        raise UsageError(f"--seed: must be -1 (random) or in 0..{MAX_SEED - num + 1}, got {seed}")
    return seed


def batch_requests(request: GenerationRequest, label: int | None) -> list[BatchRequest]:
    """Split a request into forward batches of at most ``batch_size`` images (seed, seed+1, ...)."""
    seed = resolve_seed(request.seed, request.num)
    seeds = [seed + i for i in range(request.num)]
    out = []
    for a in range(0, request.num, request.batch_size):
        chunk = seeds[a : a + request.batch_size]
        out.append(
            BatchRequest(
                seeds=chunk,
                prompts=[request.prompt or ""] * len(chunk) if request.prompt is not None else None,
                negative=request.negative,
                labels=[label] * len(chunk) if label is not None else None,
                sampler=request.sampler,
                steps=request.steps,
                cfg=request.cfg,
                truncation=request.truncation,
                sigma_max=request.sigma_max,
                options=dict(request.options),
            )
        )
    return out


def check_options(family: Any, request: GenerationRequest) -> GenerationRequest:
    """The request with its family options (its own fields and ``options``) checked against the
    family's declaration: an option the family does not take, or a bad value, is a UsageError
    naming the option (``limner.models.declaration``)."""
    given = {name: getattr(request, name) for name in REQUEST_FIELDS}
    given.update(request.options)
    checked = family.declaration.check_options(given, family=family.name)
    own = {name: checked.get(name) for name in REQUEST_FIELDS}
    return replace(request, **own, options={k: v for k, v in checked.items() if k not in REQUEST_FIELDS})


def generate(
    request: GenerationRequest,
    *,
    loaded: LoadedRun | None = None,
    device: str = "cpu",
    callback: ProgressCallback | None = None,
) -> list[GeneratedImage]:
    """Generate ``request.num`` images, each with its full record."""
    loaded = loaded or load_run(request.run, step=request.step, device=device)
    request = check_options(loaded.family, request)
    label = _resolve_label(loaded, request.label)
    edit = edit_inputs(loaded, request)
    out: list[GeneratedImage] = []
    for breq in batch_requests(request, label):
        if edit is not None:
            edit.apply(breq)
        with precision_context(request.precision, loaded.device), conv_plan.trace() as plans:
            result = loaded.family.generate(breq, callback=callback)
        images = result.images if edit is None else edit.composite(result.images)
        for i, seed in enumerate(result.seeds):
            record = make_record(loaded, request, breq, seed, i, result.images.shape, label, plans)
            if edit is not None:
                record = replace(record, **edit.record_fields())
            out.append(GeneratedImage(to_pil(images[i]), record))
    return out


@dataclass
class EditInputs:
    """A request's decoded init image and mask (``limner.generation.editing``)."""

    init: Any
    mask: Any
    strength: float
    resample: int

    def apply(self, breq: BatchRequest) -> None:
        B = len(breq.seeds)
        breq.init = self.init.pixels[None].expand(B, -1, -1, -1)
        breq.strength = self.strength
        breq.mask = None if self.mask is None else self.mask.pixels[None].expand(B, -1, -1, -1)
        breq.resample = self.resample

    def composite(self, images: torch.Tensor) -> torch.Tensor:
        from limner.generation.editing import composite

        return images if self.mask is None else composite(images, self.init.pixels[None], self.mask.pixels[None])

    def record_fields(self) -> dict[str, Any]:
        def entry(image):
            return None if image is None else {"sha256": image.sha256, "name": image.stored_name,
                                               "source": str(image.source)}

        return {"init_image": entry(self.init), "mask": entry(self.mask), "strength": self.strength,
                "resample": self.resample if self.mask is not None else None}


def edit_inputs(loaded: LoadedRun, request: GenerationRequest) -> EditInputs | None:
    """The decoded inputs of an image-to-image / inpainting request (None for plain sampling);
    UsageErrors name the field: a family without the capability, a mask without an init image,
    a strength out of [0, 1]."""
    from limner.generation.editing import load_init_image, load_mask

    if request.init_image is None:
        for name in ("mask", "strength", "resample"):
            if getattr(request, name) is not None:
                raise UsageError(f"needs an init image (--init-image)", field=name)
        return None
    declaration = loaded.family.declaration
    if not declaration.supports("img2img"):
        raise UsageError(f"a {loaded.family.name} run cannot start from an image", field="init_image")
    if request.mask is not None and not declaration.supports("inpaint"):
        raise UsageError(f"a {loaded.family.name} run cannot inpaint", field="mask")
    strength = 1.0 if request.strength is None and request.mask is not None else request.strength
    strength = 0.6 if strength is None else float(strength)
    if not 0.0 <= strength <= 1.0:
        raise UsageError(f"must be in [0, 1], got {strength}", field="strength")
    resample = 3 if request.resample is None else int(request.resample)
    if resample < 1:
        raise UsageError(f"must be at least 1, got {resample}", field="resample")
    cfg = loaded.run_config["data"]
    init = load_init_image(request.init_image, int(cfg["resolution"]), int(cfg["channels"]))
    mask = None if request.mask is None else load_mask(request.mask, int(cfg["resolution"]))
    return EditInputs(init=init, mask=mask, strength=strength, resample=resample)


def _precision_of(dtype: str) -> str:
    precision = precision_of(dtype)
    if precision is None:
        raise CheckpointError(f"the record's dtype {dtype!r} is not one limner samples in (float32, bfloat16)")
    return precision


def _resolve_label(loaded: LoadedRun, label: int | str | None) -> int | None:
    if label is None:
        return None
    return loaded.family.encoder.label_index(label)


def make_record(
    loaded: LoadedRun, request: GenerationRequest, breq: BatchRequest, seed: int, index: int,
    shape: torch.Size, label: int | None, plans: Mapping[str, Traced] | None = None,
) -> GenerationRecord:
    """The record of one image: the request plus everything resolved for it (``plans``: the
    convolution plans its sampling used, :func:`limner.nn.conv_plan.trace`)."""
    defaults = loaded.family.option_defaults()
    return GenerationRecord(
        prompt=request.prompt,
        negative=request.negative,
        label=label,
        seed=seed,
        sampler=breq.sampler if breq.sampler is not None else defaults.get("sampler"),
        steps=breq.steps if breq.steps is not None else defaults.get("steps"),
        cfg=breq.cfg if breq.cfg is not None else defaults.get("cfg"),
        truncation=breq.truncation,
        sigma_max=breq.sigma_max,  # None: the run's own (as for truncation)
        batch_seeds=list(breq.seeds),
        index=index,
        family=loaded.family.name,
        run_id=loaded.run_id,
        run_path=str(loaded.run_dir.resolve()),
        step=loaded.step,
        model_hash=loaded.model_hash,
        width=int(shape[-1]),
        height=int(shape[-2]),
        device=str(loaded.device),
        dtype=PRECISION_DTYPES[request.precision],
        limner_version=__version__,
        torch_version=torch.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        cpu_kernels=(cpu_kernel_setting(bfloat16=request.precision == "bf16", plans=plans)
                     if torch.device(loaded.device).type == "cpu" else None),
        # the run's defaults too, so the record names the temperature etc. it was sampled with
        options={**{k: v for k, v in defaults.items() if k not in REQUEST_FIELDS}, **breq.options},
    )


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 [C, H, W] -> PIL (L or RGB)."""
    arr = image.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def image_filename(record: GenerationRecord, n: int) -> str:
    """A safe, unique-per-output file name: ``00003-1234.png`` (no prompt text in paths)."""
    return f"{n:05d}-{record.seed}.png"


def save_images(images: list[GeneratedImage], out_dir: str | Path) -> list[Path]:
    """Write images with their records into ``out_dir`` (created), never overwriting files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = len(list(out_dir.glob("*.png")))
    paths = []
    for k, g in enumerate(images):
        n = start + k
        path = out_dir / image_filename(g.record, n)
        while path.exists():
            n += 1
            path = out_dir / image_filename(g.record, n)
        _store_inputs(g.record, out_dir)
        paths.append(save_png(g.image, g.record, path))
    return paths


def _store_inputs(record: GenerationRecord, out_dir: Path) -> None:
    """Exact copies of an edit's init image and mask in ``out_dir/inputs/`` (by sha256)."""
    from limner.generation.editing import EditImage, store_input

    for entry in (record.init_image, record.mask):
        if entry:
            store_input(EditImage(None, entry["sha256"], Path(entry["source"])), out_dir)


def regenerate(record: GenerationRecord, *, run: str | None = None, device: str = "cpu",
               callback: ProgressCallback | None = None, inputs: list[Path] | None = None) -> GeneratedImage:
    """Replay a record: the same forward batch (seeds) and settings, returning image ``index``.
    ``callback`` sees every sampler step of that batch (``limner explain RUN filmstrip``).
    An edit's init image and mask are found by their sha256 in ``inputs`` folders (each
    searched with its ``inputs/`` store; the folder of the replayed PNG is the usual one)."""
    edit_files = {}
    for name in ("init_image", "mask"):
        entry = getattr(record, name)
        if entry:
            from limner.generation.editing import find_stored

            edit_files[name] = str(find_stored(entry["sha256"], entry["name"], list(inputs or []),
                                               field=name, source=entry.get("source")))
    request = GenerationRequest(
        run=run or record.run_path,
        prompt=record.prompt,
        negative=record.negative,
        label=record.label,
        seed=record.batch_seeds[0],
        num=len(record.batch_seeds),
        sampler=record.sampler,
        steps=record.steps,
        cfg=record.cfg,
        truncation=record.truncation,
        sigma_max=record.sigma_max,
        options=dict(record.options),
        step=record.step,
        batch_size=len(record.batch_seeds),
        precision=_precision_of(record.dtype),
        strength=record.strength if edit_files else None,
        resample=record.resample,
        **edit_files,
    )
    loaded = load_run(request.run, step=record.step, device=device)
    if loaded.model_hash != record.model_hash:
        raise CheckpointError(
            f"run {request.run} step {record.step} has model hash {loaded.model_hash}, "
            f"the record says {record.model_hash}: the weights changed"
        )
    images = generate(request, loaded=loaded, callback=callback)
    now = images[record.index].record.cpu_kernels  # which kernels this replay's sampling used
    if record.cpu_kernels is not None and now is not None and now != record.cpu_kernels:
        log.warning(
            "the image was made with CPU kernels %r, this process used %r: pixels may differ slightly "
            "(LIMNER_KERNELS, LIMNER_WINOGRAD and the machine's measured convolution plans select them; "
            "see `limner env`)", record.cpu_kernels, now,
        )
    return replace(images[record.index], record=replace(images[record.index].record, created=record.created))
