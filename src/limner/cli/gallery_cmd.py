"""``limner gallery``: the studio's gallery from the command line (``import`` PNGs limner wrote)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

EPILOG = """\
examples:
  limner gallery import out/                      # into ~/.limner (or $LIMNER_HOME) as the local user
  limner gallery import old-samples/ --user alice --home ~/limner-studio
  limner gallery import renders/ --db postgresql+psycopg://studio@db/limner --home /shared/limner

Each PNG limner wrote carries its generation record; import copies the file into the home
(images/u<user id>/imported/...), reads the record from it and adds a gallery row, so the image
is searchable and can be regenerated. Identical pixels already in the user's gallery are skipped.
PNGs without a record (not written by limner) are listed and left alone. Importing the same
folder twice adds nothing the second time.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gallery", help="manage the studio's gallery (import PNGs)",
                       description="Manage the studio's image gallery from the command line.")
    gsub = p.add_subparsers(dest="gallery_command", metavar="ACTION", required=True)
    imp = gsub.add_parser(
        "import", help="register existing limner PNGs (with their embedded records) in the gallery",
        description="Copy PNGs written by limner into the studio home and register them in the "
                    "gallery from the generation record each one carries.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("folder", metavar="DIR", type=Path, help="folder of PNGs (searched recursively)")
    imp.add_argument("--home", type=Path, default=None, metavar="DIR",
                     help="studio home folder (default: $LIMNER_HOME or ~/.limner)")
    imp.add_argument("--db", default=None, metavar="URL",
                     help="database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                          "(default: SQLite gallery.db in --home)")
    imp.add_argument("--user", default=None, metavar="NAME",
                     help="owner of the imported images (default: the studio's local user)")
    imp.add_argument("--no-embed", action="store_true",
                     help="skip the MiniLM prompt embeddings (semantic search will not find these "
                          "images until the studio backfills them)")
    imp.set_defaults(func=run_import)


def default_home() -> Path:
    """``$LIMNER_HOME`` or ``~/.limner`` (the studio's default)."""
    return Path(os.environ.get("LIMNER_HOME") or Path.home() / ".limner")


def run_import(args: argparse.Namespace) -> int:
    from limner.errors import UsageError
    from limner.store import Store

    folder: Path = args.folder
    if not folder.is_dir():
        raise UsageError(f"DIR: {folder} is not a folder")
    home = args.home or default_home()
    embedder = None if args.no_embed else _embedder()
    store = Store.open(args.db, home=home, embedder=embedder)
    try:
        owner = store.user_by_name(args.user) if args.user else store.ensure_local_user()
        result = import_folder(store, folder, owner)
    finally:
        store.close()
    print(f"imported {result.added}, already in the gallery {result.duplicates}, "
          f"skipped {len(result.skipped)} (home {home})")
    for path, reason in result.skipped[:20]:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    if len(result.skipped) > 20:
        print(f"  ... and {len(result.skipped) - 20} more", file=sys.stderr)
    return 0


def _embedder():
    try:
        from limner.conditioning.prompt_embed import embed_prompts
    except ImportError as e:
        print(f"limner gallery: no semantic search for these images ({e})", file=sys.stderr)
        return None
    return embed_prompts


class ImportResult:
    def __init__(self) -> None:
        self.added = 0
        self.duplicates = 0
        self.ids: list[int] = []
        self.skipped: list[tuple[str, str]] = []


def import_folder(store, folder: Path, owner) -> ImportResult:  # noqa: ANN001 - Store, User
    """Copy and register every limner PNG under ``folder`` for ``owner``."""
    from tqdm import tqdm

    from limner.errors import LimnerError
    from limner.store.files import png_record

    result = ImportResult()
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".png" and p.is_file()
                   and not p.name.startswith("."))
    dest_root = store.home / "images" / f"u{owner.id}" / "imported"
    for path in tqdm(paths, desc="importing", unit="img", disable=not sys.stderr.isatty()):
        try:
            record = png_record(path)
        except LimnerError as e:
            result.skipped.append((str(path), str(e).removeprefix(f"{path}: ")))
            continue
        dest = _free_name(dest_root / path.relative_to(folder))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        try:
            image_id = store.add_image(dest, record, owner)
        except LimnerError as e:
            dest.unlink(missing_ok=True)
            result.skipped.append((str(path), str(e)))
            continue
        if dest.exists() and image_id not in result.ids:
            result.added += 1
        else:
            result.duplicates += 1  # add_image kept the existing copy and removed ours
        result.ids.append(image_id)
    return result


def _free_name(dest: Path) -> Path:
    if not dest.exists():
        return dest
    n = 1
    while (candidate := dest.with_name(f"{dest.stem}-{n}{dest.suffix}")).exists():
        n += 1
    return candidate
