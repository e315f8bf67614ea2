"""Inputs of image-to-image and inpainting requests: read through the one decode function
(``limner.data.decode``), fitted to the run's resolution like training images, identified by the
sha256 of the file's bytes, and kept as an exact copy in an ``inputs/`` store next to the images
made from them, so ``limner sample --from-image`` finds them and replays the result bitwise.

The mask is read as luma: pixels >= 128 (white) are regenerated, the rest are kept; after
sampling the kept pixels are copied from the fitted input (the final composite), so they are
bitwise the input whatever the model did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from limner.errors import UsageError

STORE = "inputs"  # folder beside the output images that holds exact copies of the inputs


@dataclass(frozen=True)
class EditImage:
    """One decoded input: uint8 [C, H, W] at the run's resolution, its file's sha256 and path."""

    pixels: Tensor
    sha256: str
    source: Path

    @property
    def stored_name(self) -> str:
        """File name in an ``inputs/`` store: the hash plus the original suffix."""
        return self.sha256 + (self.source.suffix.lower() or ".bin")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_init_image(path: str | Path, resolution: int, channels: int, *, field: str = "init_image") -> EditImage:
    """The input image fitted to the run: decoded (alpha on white), centre-cropped and resized
    like training data. UsageError naming ``field`` when missing or undecodable."""
    img, digest = _decode(path, "RGB" if channels == 3 else "L", field)
    from limner.data.transforms import resize_center_crop

    arr = resize_center_crop(img, resolution)  # [H, W, C]
    return EditImage(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), digest, Path(path))


def load_mask(path: str | Path, resolution: int, *, field: str = "mask") -> EditImage:
    """The mask as bool [1, H, W] (True = regenerate: luma >= 128 after fitting)."""
    img, digest = _decode(path, "L", field)
    from limner.data.transforms import resize_center_crop

    arr = resize_center_crop(img, resolution)[..., 0] >= 128
    if not arr.any():
        raise UsageError(f"{path}: the mask is all black, so nothing would be regenerated "
                         "(white = regenerate, black = keep)", field=field)
    return EditImage(torch.from_numpy(arr[None].copy()), digest, Path(path))


def _decode(path: str | Path, mode: str, field: str):
    from limner.data.decode import ImageDecodeError, decode_image

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} not found", field=field)
    try:
        img = decode_image(path, mode=mode)
    except ImageDecodeError as e:
        raise UsageError(f"{path}: {e}", field=field) from None
    return img, file_sha256(path)


def composite(images: Tensor, init: Tensor, mask: Tensor) -> Tensor:
    """uint8 [B, C, H, W]: generated pixels where ``mask`` [1 or B, 1, H, W] is True, the input's
    elsewhere (bitwise)."""
    return torch.where(mask.to(images.device), images, init.to(images.device, images.dtype))


def store_input(image: EditImage, folder: Path) -> Path:
    """Copy the input file byte for byte into ``folder/inputs/<sha256><suffix>`` (once)."""
    from limner.fsutil import atomic_write

    dest = Path(folder) / STORE / image.stored_name
    if not dest.is_file():
        data = image.source.read_bytes()
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise UsageError(f"{image.source} changed while generating; not storing it")
        atomic_write(dest, lambda f: f.write(data))
    return dest


def find_stored(sha256: str, suffix_name: str, folders: list[Path], *, field: str,
                source: str | None = None) -> Path:
    """The stored copy of an input by hash: ``<folder>/inputs/<name>`` for each folder, then the
    original ``source`` file if it still has that hash. UsageError naming ``field`` otherwise."""
    for folder in folders:
        for candidate in (Path(folder) / STORE / suffix_name, Path(folder) / suffix_name):
            if candidate.is_file() and file_sha256(candidate) == sha256:
                return candidate
    if source and Path(source).is_file() and file_sha256(Path(source)) == sha256:
        return Path(source)
    where = ", ".join(str(Path(f) / STORE) for f in folders)
    raise UsageError(f"the record's {field} (sha256 {sha256[:12]}) is not in {where}; give the "
                     f"original file with --{field.replace('_', '-')}", field=field)

