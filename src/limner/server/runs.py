"""Where a user's run folders and datasets live under the studio home, and how a model name
from a request becomes a run folder (the user's own runs, then the bundled models).

``home/runs/u<id>/<name>`` and ``home/datasets/u<id>/<name>``: one folder per user, so users see
only their own runs; names are checked (no separators, no leading dot) and every resolved path
is checked to stay inside its folder (real paths, so a symlink cannot lead out).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from limner.errors import CheckpointError, UsageError
from limner.runs import read_run_config, run_summary

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str, field: str = "name") -> str:
    if not NAME.match(name or ""):
        raise UsageError("1-128 letters, digits, '_', '.' or '-', starting with a letter or digit", field=field)
    return name


def user_path(home: Path, kind: str, user_id: int) -> Path:
    """``home/kind/u<id>``, the user's folder of that kind (not created)."""
    return Path(home) / kind / f"u{int(user_id)}"


def user_folder(home: Path, kind: str, user_id: int) -> Path:
    path = user_path(home, kind, user_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


USER_KINDS = ("runs", "datasets", "evals", "explain")  # the per-user folders under the home


def hand_over(home: Path, from_id: int, to_id: int) -> list[str]:
    """Move ``from_id``'s folders under the home to ``to_id`` (when the first admin adopts what
    the implicit local user made) and leave a link at each old path, so the absolute paths kept
    in run configs (``data.path``) and queued jobs' payloads still lead to the moved folders.
    Returns the kinds moved. A name the new owner already has stays where it is (logged)."""
    moved = []
    for kind in USER_KINDS:
        old, new = user_path(home, kind, from_id), user_path(home, kind, to_id)
        if old.is_symlink() or not old.is_dir() or not any(old.iterdir()):
            continue
        if not new.exists():
            os.replace(old, new)
        else:  # the new owner has some already: move entry by entry, keeping theirs
            for entry in sorted(old.iterdir()):
                if (new / entry.name).exists():
                    log.warning("%s/%s of user %d stays: user %d has one of that name", kind, entry.name,
                                from_id, to_id)
                    continue
                os.replace(entry, new / entry.name)
            if any(old.iterdir()):
                moved.append(kind)
                continue
            old.rmdir()
        try:
            old.symlink_to(new.name, target_is_directory=True)
        except OSError as e:  # a file system without links: recorded paths need the new folder
            log.warning("could not link %s to %s (%s): paths recorded under it are stale", old, new, e)
        moved.append(kind)
    return moved


def contained(root: Path, name: str, field: str = "name") -> Path:
    """``root/name`` after checking the name and that its real path stays inside ``root``."""
    check_name(name, field)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / name))
    if real.parent != real_root:
        raise UsageError(f"{name!r} resolves outside its folder", field=field)
    return real


def run_dir(home: Path, user_id: int, name: str) -> Path:
    return contained(user_folder(home, "runs", user_id), name, "model")


def bundled_models() -> dict[str, Path]:
    """Bundled model name -> run folder (``limner.bundled.list_bundled``), {} when none ship."""
    try:
        from limner.bundled import list_bundled
    except ImportError:
        return {}
    return {m.name: m.path for m in list_bundled()}


def bundled_description(name: str) -> str | None:
    try:
        from limner.bundled import DESCRIPTIONS
    except ImportError:
        return None
    return DESCRIPTIONS.get(name)


def resolve_model(home: Path, user_id: int, name: str) -> tuple[Path, str]:
    """(run folder, "run" | "bundled") for a request's ``model``; 404-style error when absent."""
    from limner.store.errors import NotFound

    check_name(name, "model")
    own = run_dir(home, user_id, name)
    if (own / "config.json").is_file():
        return own, "run"
    bundled = bundled_models()
    if name in bundled:
        return bundled[name], "bundled"
    raise NotFound(f"no model {name!r} (GET /api/models lists yours)")


def read_config(folder: Path) -> dict[str, Any]:
    """The run's config.json, or {} when it is missing or unreadable."""
    try:
        return read_run_config(folder)
    except CheckpointError:
        return {}


def describe(folder: Path, name: str, kind: str) -> dict[str, Any]:
    """What the model list shows: ``limner.runs.run_summary`` (id, family, condition, resolution,
    newest step) plus the options and capabilities its family declares. A run whose config
    cannot be read raises CheckpointError (``list_runs`` shows it as unreadable)."""
    summary = run_summary(folder)
    out = {**summary, "name": name, "kind": kind, "options": {}, "capabilities": []}
    decl = family_declaration(summary["family"])
    if decl is not None:
        data = decl.to_json()
        out["options"] = {o["name"]: {k: v for k, v in o.items() if v is not None} for o in data["options"]}
        out["capabilities"] = data["capabilities"]
        out["summary"] = data.get("summary")
    return out


def family_declaration(family: str | None) -> Any:
    """The registered family's declaration (``limner.models.registry``), None when unknown."""
    if not family:
        return None
    from limner.models.registry import family_class

    try:
        return getattr(family_class(family), "declaration", None)
    except UsageError:
        return None


def list_runs(home: Path, user_id: int) -> list[dict[str, Any]]:
    """A user's run folders by name; one whose config cannot be read is listed as ``unreadable``
    with the reason (not hidden, and not offered for generation)."""
    root = user_folder(home, "runs", user_id)
    out = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.is_symlink() and (folder / "config.json").is_file():
            try:
                info = describe(folder, folder.name, "run")
            except CheckpointError:
                out.append({"name": folder.name, "kind": "run", "step": None, "state": "unreadable",
                            "error": "config.json is not a readable run config"})
                continue
            out.append({**info, "state": "ready" if info["step"] is not None else "empty"})
    return out


def dataset_path(raw: str, roots: list[Path], field: str = "data_path") -> Path:
    """A dataset folder (or .npz/IDX file) typed by an admin: absolute, no ``..``, and its real
    path (symlinks resolved) inside one of ``roots``; containment is checked before existence,
    so nothing outside the roots can be probed. UsageError naming ``field`` otherwise."""
    if "\x00" in raw:
        raise UsageError("contains a NUL character", field=field)
    path = Path(raw)
    if not path.is_absolute():
        raise UsageError(f"{raw!r} is not an absolute path (e.g. {roots[0]}/my-photos)", field=field)
    if ".." in path.parts:
        raise UsageError("must not contain '..'", field=field)
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            break
    else:
        allowed = ", ".join(str(r) for r in roots)
        raise UsageError(f"{raw} is outside the dataset folders this studio allows ({allowed}); start it with "
                         "--data-root DIR to allow another", field=field)
    if not real.exists():
        raise UsageError(f"no such folder: {raw}", field=field)
    return real
