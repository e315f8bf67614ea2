"""Dataset sources: find out what a path holds and list its items, without decoding pixels.

Detection for a directory (first rule that matches wins):

1. ``metadata.jsonl`` at the top -> ``imagefolder`` (the Hugging Face ``imagefolder`` layout:
   one JSON object a line with ``file_name``, a path relative to the folder, and ``text``).
   Only the listed files are used; a ``file_name`` that is absolute, contains ``..`` or resolves
   (through symlinks) outside the folder is skipped with a reason naming its line. Image files
   in the folder that no line names are ignored, and listed as such (``FolderSource.unlisted``).
2. Fashion-MNIST style IDX files in it (``*-images-idx3-ubyte[.gz]``) -> ``idx`` (train split).
3. Any image with a sidecar ``<stem>.txt`` beside it -> ``captions``; images without a sidecar
   get caption "" (uncaptioned).
4. No images at the top and images in two or more subfolders -> ``classes`` (label = index of
   the top-level folder name in sorted order; images are collected recursively inside it).
5. Otherwise ``plain``: every image under the folder, recursively.

A file path is ``idx`` (an images IDX file; the labels file is found beside it by name) or
``npz`` (arrays ``images``, optional ``labels``, ``captions``, ``class_names``).

Walking rules (RELIABILITY.md A6, A13, A14): hidden files and folders, OS clutter
(``Thumbs.db``, ``desktop.ini``, ...) and text/metadata files (``.json``, ``.md``, ...) are
ignored silently; every other regular file is a candidate and its format is judged by content
when decoded. Symlinks are followed only to regular files inside the dataset root; links
outside it, to folders, broken links, loops and special files (FIFOs, devices) are reported as
skipped and never read. Paths keep whatever bytes the OS gives (``os.fsdecode``); show them with
``escape_path``.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from limner.data import arrays
from limner.data.decode import NotRegularFileError, open_regular
from limner.data.display import escape_path
from limner.errors import DataError, UsageError

SourceKind = Literal["imagefolder", "captions", "classes", "plain", "idx", "npz"]

METADATA_NAME = "metadata.jsonl"
MAX_CAPTION_BYTES = 4096
MAX_CAPTION_CHARS = 1000
_CLUTTER_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "__pycache__"})
_TEXT_SUFFIXES = frozenset({
    ".json", ".jsonl", ".md", ".csv", ".tsv", ".yaml", ".yml", ".toml", ".py", ".ini", ".cfg",
    ".log", ".html", ".htm", ".rst", ".npz", ".npy",
})
_TEXT_STEMS = frozenset({"license", "readme", "notice", "copying", "authors"})
# what counts as an image file that metadata.jsonl leaves out (a hint: formats are judged by content)
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})


@dataclass
class SkippedFile:
    """A file (or metadata line) that was not used, and why."""

    path: str
    reason: str


@dataclass
class FileItem:
    """One image file of a folder source, with its caption and label if the source has them."""

    rel: str  # path relative to the root, "/"-separated (the cache key uses it)
    path: str  # path to open
    caption: str | None = None
    label: int | None = None


@dataclass
class FolderSource:
    """An image folder, listed but not decoded."""

    root: str
    kind: SourceKind
    items: list[FileItem]
    class_names: list[str] | None = None
    skipped: list[SkippedFile] = field(default_factory=list)  # refused while listing
    caption_issues: list[SkippedFile] = field(default_factory=list)  # caption replaced by ""
    unlisted: list[str] = field(default_factory=list)  # imagefolder: image files no line names (ignored)

    @property
    def has_captions(self) -> bool:
        return self.kind in ("imagefolder", "captions")


def scan_source(path: str | os.PathLike, *, limit: int | None = None) -> FolderSource | arrays.ArraySource:
    """Detect the source kind of ``path`` (module rules) and list its items (at most ``limit``)."""
    p = os.fsdecode(path)
    if not os.path.exists(p):
        raise UsageError(f"no such file or directory: {escape_path(p)}")
    if os.path.isdir(p):
        return _scan_dir(p, limit)
    if arrays.is_idx_images(p):
        return arrays.load_idx(p, limit=limit)
    if p.lower().endswith(".npz"):
        return arrays.load_npz(p, limit=limit)
    raise DataError(
        f"{escape_path(p)} is not a dataset: give a folder of images, an IDX images file "
        "(*-images-idx3-ubyte[.gz]) or an .npz file"
    )


def _scan_dir(root: str, limit: int | None) -> FolderSource | arrays.ArraySource:
    """Apply the detection rules to a directory."""
    if os.path.isfile(os.path.join(root, METADATA_NAME)):
        return _scan_imagefolder(root, limit)
    idx = arrays.find_idx_in_dir(root)
    if idx is not None:
        return arrays.load_idx(idx, limit=limit)
    files, texts, skipped = _walk(root)
    sidecars = {rel: texts[os.path.splitext(rel)[0]] for rel, _ in files if os.path.splitext(rel)[0] in texts}
    if sidecars:
        return _captions_source(root, files[:limit], sidecars, skipped)
    folders = sorted({rel.split("/")[0] for rel, _ in files if "/" in rel})
    if len(folders) >= 2 and all("/" in rel for rel, _ in files):
        index = {name: i for i, name in enumerate(folders)}
        items = [FileItem(rel, p, label=index[rel.split("/")[0]]) for rel, p in files[:limit]]
        return FolderSource(root, "classes", items, class_names=folders, skipped=skipped)
    return FolderSource(root, "plain", [FileItem(rel, p) for rel, p in files[:limit]], skipped=skipped)


def _captions_source(
    root: str, files: list[tuple[str, str]], sidecars: dict[str, str], skipped: list[SkippedFile]
) -> FolderSource:
    """Pair images with their sidecar captions (missing sidecar -> "")."""
    src = FolderSource(root, "captions", [], skipped=skipped)
    for rel, p in files:
        caption = ""
        if rel in sidecars:
            caption, issue = read_caption_file(sidecars[rel])
            if issue:
                src.caption_issues.append(SkippedFile(sidecars[rel], issue))
        src.items.append(FileItem(rel, p, caption=caption))
    return src


# ---------------------------------------------------------------- walking


def _is_ignored(name: str) -> bool:
    """Hidden files, OS clutter and text/metadata files are not candidates (and not errors)."""
    low = name.lower()
    if name.startswith(".") or low in _CLUTTER_NAMES:
        return True
    stem, suffix = os.path.splitext(low)
    return suffix in _TEXT_SUFFIXES or (not suffix and stem in _TEXT_STEMS)


def _inside(root_real: str, target_real: str) -> bool:
    """Whether a resolved path lies inside (or is) the resolved root."""
    try:
        return os.path.commonpath([root_real, target_real]) == root_real
    except ValueError:  # different drives on Windows
        return False


def _symlink_kind(path: str, root_real: str) -> tuple[str, str]:
    """Classify a symlink: ("file", "") only for a regular file inside the root."""
    if not _inside(root_real, os.path.realpath(path)):
        return "skip", "symlink points outside the dataset folder (not read)"
    try:
        st = os.stat(path)
    except OSError:
        return "skip", "broken symlink or symlink loop (not read)"
    if stat.S_ISDIR(st.st_mode):
        return "skip", "symlinked folder (not followed)"
    if stat.S_ISREG(st.st_mode):
        return "file", ""
    return "skip", "not a regular file (not read)"


def _entry_kind(entry: os.DirEntry, root_real: str) -> tuple[str, str]:
    """Classify a directory entry as "dir", "file" or "skip" (with a reason)."""
    try:
        if entry.is_symlink():
            return _symlink_kind(entry.path, root_real)
        if entry.is_dir(follow_symlinks=False):
            return "dir", ""
        if entry.is_file(follow_symlinks=False):
            return "file", ""
    except OSError as e:
        return "skip", f"cannot stat ({e.strerror or e})"
    return "skip", "not a regular file (not read)"


def _walk(root: str) -> tuple[list[tuple[str, str]], dict[str, str], list[SkippedFile]]:
    """List candidate files [(rel, path)] sorted by rel, sidecar texts {rel stem: path}, skips."""
    root_real = os.path.realpath(root)
    files: list[tuple[str, str]] = []
    texts: dict[str, str] = {}
    skipped: list[SkippedFile] = []
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append(SkippedFile(abs_dir, f"cannot list folder ({e.strerror or e})"))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_text = entry.name.lower().endswith(".txt")
            if not is_text and _is_ignored(entry.name):
                continue
            if is_text and entry.name.startswith("."):
                continue
            kind, reason = _entry_kind(entry, root_real)
            if kind == "dir":
                stack.append((rel, entry.path))
            elif kind == "skip":
                skipped.append(SkippedFile(entry.path, reason))
            elif is_text:
                texts[rel[: -len(".txt")]] = entry.path
            else:
                files.append((rel, entry.path))
    files.sort()
    return files, texts, skipped


# ---------------------------------------------------------------- captions


def clean_caption(text: str) -> tuple[str, str]:
    """Collapse whitespace and cap the length; returns (caption, issue or "")."""
    caption = " ".join(text.split())
    if len(caption) > MAX_CAPTION_CHARS:
        return caption[:MAX_CAPTION_CHARS], f"caption truncated to {MAX_CAPTION_CHARS} characters"
    return caption, ""


def read_caption_file(path: str) -> tuple[str, str]:
    """Read a sidecar caption: (caption, issue or ""); unreadable/binary/non-UTF-8 gives ""."""
    try:
        with open_regular(path) as f:
            data = f.read(MAX_CAPTION_BYTES + 1)
    except NotRegularFileError:
        return "", "caption is not a regular file; ignored"
    except OSError as e:
        return "", f"caption unreadable ({e.strerror or e}); ignored"
    cut = len(data) > MAX_CAPTION_BYTES
    data = data[:MAX_CAPTION_BYTES]
    if b"\x00" in data:
        return "", "caption file is binary; ignored"
    try:  # an incremental decoder leaves a character split by the byte cap undecoded
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(data, final=not cut)
    except UnicodeDecodeError:
        return "", "caption is not valid UTF-8; ignored"
    caption, issue = clean_caption(text)
    if cut and not issue:
        issue = f"caption file over {MAX_CAPTION_BYTES} bytes; truncated"
    return caption, issue


# ---------------------------------------------------------------- imagefolder


def _member_path(root: str, root_real: str, file_name: str) -> str | None:
    """The path of a metadata ``file_name`` if it stays inside the folder, else None."""
    parts = PurePosixPath(file_name).parts
    if not file_name or "\x00" in file_name or PurePosixPath(file_name).is_absolute() or ".." in parts:
        return None
    full = os.path.join(root, *parts)
    return full if _inside(root_real, os.path.realpath(full)) else None


def _read_metadata_lines(root: str) -> list[str]:
    """The lines of metadata.jsonl; unreadable or non-UTF-8 metadata is a DataError."""
    meta = os.path.join(root, METADATA_NAME)
    try:
        with open(meta, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {escape_path(meta)}: {e}") from None


def _scan_imagefolder(root: str, limit: int | None) -> FolderSource:
    """List the files named by metadata.jsonl, with their ``text`` captions."""
    src = FolderSource(root, "imagefolder", [])
    root_real, seen, named = os.path.realpath(root), {}, set()
    for lineno, line in enumerate(_read_metadata_lines(root), 1):
        if not line.strip():
            continue
        where = f"{METADATA_NAME} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            src.skipped.append(SkippedFile(where, f"invalid JSON ({e.msg})"))
            continue
        name = row.get("file_name") if isinstance(row, dict) else None
        if not isinstance(name, str):
            src.skipped.append(SkippedFile(where, "no file_name string"))
            continue
        named.add(PurePosixPath(name).as_posix())
        full = _member_path(root, root_real, name)
        if full is None:
            src.skipped.append(SkippedFile(name, f"{where}: file_name escapes the dataset folder"))
        elif name in seen:
            src.skipped.append(SkippedFile(name, f"{where}: duplicate of line {seen[name]}"))
        elif not os.path.lexists(full):
            src.skipped.append(SkippedFile(full, f"listed in {where} but missing"))
        else:
            seen[name] = lineno
            caption = _row_caption(src, full, row)
            src.items.append(FileItem(PurePosixPath(name).as_posix(), full, caption=caption))
        if limit is not None and len(src.items) >= limit:
            break
    else:  # every line read: any other image file in the folder is ignored, say which
        src.unlisted = [path for rel, path in _walk(root)[0]
                        if rel not in named and os.path.splitext(rel)[1].lower() in _IMAGE_SUFFIXES]
    return src


def _row_caption(src: FolderSource, path: str, row: dict) -> str:
    """The cleaned ``text`` of a metadata row ("" with an issue when it is not a string)."""
    text = row.get("text")
    if text is None:
        return ""
    if not isinstance(text, str):
        src.caption_issues.append(SkippedFile(path, f"text is {type(text).__name__}, not a string; ignored"))
        return ""
    caption, issue = clean_caption(text)
    if issue:
        src.caption_issues.append(SkippedFile(path, issue))
    return caption


UNLISTED_SHOWN = 5  # unlisted image files named by data check and the training warning


def unlisted_summary(unlisted: list[str]) -> str:
    """The sentence for image files that metadata.jsonl does not name (data check and training)."""
    files = "file is" if len(unlisted) == 1 else "files are"
    return f"not in {METADATA_NAME}: {len(unlisted)} image {files} in the folder but not listed, so ignored"


def count_items(src: FolderSource | arrays.ArraySource) -> int:
    """Number of rows a source offers (files or array rows)."""
    return len(src.items) if isinstance(src, FolderSource) else int(src.images.shape[0])

