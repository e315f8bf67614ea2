"""Storing a generated image: the PNG (with its record) under the studio home, then the row.

The file is written first and atomically (``limner.fsutil`` through ``save_png``), then the store
registers it (thumbnail, content hash, row). A crash between the two leaves a file the store's
reconcile registers from its embedded record; identical pixels of the same owner are one image,
so a job retried after its worker died stores nothing twice.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


def store_generated(store: Any, owner: Any, generated: Any, *, parent_id: int | None, stem: str) -> Any:
    """Write ``generated`` (a ``GeneratedImage``) for ``owner`` and return its store Image."""
    from limner.generation.pngmeta import save_png

    path = store.new_image_path(owner, stem)
    save_png(generated.image, generated.record, path)
    image_id = store.add_image(path, asdict(generated.record), owner, parent_id=parent_id)
    return store.get_image(owner, image_id)
