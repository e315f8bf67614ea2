"""Storing a generated image: the PNG (with its record) under the studio home, then the row.

The file is written first and atomically (``limner.fsutil`` through ``save_png``), then the store
registers it (thumbnail, content hash, row). A crash between the two leaves a file the store's
reconcile registers from its embedded record; identical pixels of the same owner are one image,
so a job retried after its worker died stores nothing twice. The inputs of an image-to-image or
inpainting image are kept first, as ``limner sample`` keeps them next to its PNGs.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


def store_generated(store: Any, owner: Any, generated: Any, *, parent_id: int | None, stem: str) -> Any:
    """Write ``generated`` (a ``GeneratedImage``) for ``owner`` and return its store Image."""
    from limner.generation.pngmeta import save_png

    path = store.new_image_path(owner, stem)
    _keep_inputs(store, owner, generated.record)
    save_png(generated.image, generated.record, path)
    image_id = store.add_image(path, asdict(generated.record), owner, parent_id=parent_id)
    return store.get_image(owner, image_id)


def _keep_inputs(store: Any, owner: Any, record: Any) -> None:
    """Exact copies of an edit's init image and mask in the owner's ``uploads/u<id>/inputs/``
    (by sha256, outside the gallery folder), so regenerating finds them after the upload is gone."""
    from pathlib import Path

    from limner.generation.editing import EditImage, store_input

    for entry in (record.init_image, record.mask):
        if entry:
            store_input(EditImage(None, entry["sha256"], Path(entry["source"])),
                        Path(store.home) / "uploads" / f"u{int(owner.id)}")
