"""``limner data check``: what a dataset holds and which files would be skipped, and why.

The validator is the loader (autolume#20): ``check_dataset`` lists the source with
``scan_source`` and judges every file with ``dataset.decode_file``, the same function
``load_dataset`` uses, so a file is reported usable here exactly when training would use it.
It reports usable/skipped counts (each skipped file with its escaped path and reason), image
files that a ``metadata.jsonl`` leaves out (ignored), caption coverage and caption problems,
class counts, and a histogram of original image sizes.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from limner.data.arrays import ArraySource
from limner.data.dataset import decode_file
from limner.data.display import escape_path
from limner.data.sources import UNLISTED_SHOWN, FolderSource, SkippedFile, scan_source, unlisted_summary

_SIZE_ROWS = 8
_BAR_WIDTH = 30
_SIDE_EDGES = (16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass
class CheckReport:
    """What ``check_dataset`` found; ``usable > 0`` means ``load_dataset`` will succeed."""

    path: str
    source_kind: str
    total: int  # candidate files (or array rows), usable + skipped
    usable_paths: list[str]  # same strings as ImageDataset.paths
    skipped: list[SkippedFile]
    has_captions: bool = False
    captioned: int = 0  # usable images with a non-empty caption
    caption_issues: list[SkippedFile] = field(default_factory=list)
    class_counts: dict[str, int] | None = None  # usable images per class
    sizes: Counter = field(default_factory=Counter)  # (width, height) of usable images -> count
    resolution: int | None = None
    smaller: int = 0  # usable images whose shorter side is below ``resolution`` (upscaled)
    unlisted: list[str] = field(default_factory=list)  # image files metadata.jsonl leaves out

    @property
    def usable(self) -> int:
        return len(self.usable_paths)


def check_dataset(
    path: str | os.PathLike,
    *,
    resolution: int | None = None,
    progress: bool = False,
    limit: int | None = None,
) -> CheckReport:
    """Scan and fully decode a dataset with the loader's acceptance rule -> CheckReport.

    ``limit`` checks only the first items, in the order ``load_dataset(limit=...)`` takes them.
    """
    src = scan_source(path, limit=limit)
    if isinstance(src, ArraySource):
        report = _check_arrays(src)
    else:
        report = _check_folder(src, progress)
    report.resolution = resolution
    if resolution is not None:
        report.smaller = sum(n for (w, h), n in report.sizes.items() if min(w, h) < resolution)
    return report


def _check_folder(src: FolderSource, progress: bool) -> CheckReport:
    """Decode every listed file (no resize) and tally the results."""
    report = CheckReport(
        src.root, src.kind, len(src.items) + len(src.skipped), [], list(src.skipped),
        has_captions=src.has_captions, caption_issues=list(src.caption_issues), unlisted=list(src.unlisted),
    )
    per_class: Counter = Counter()
    bar = tqdm(src.items, desc="checking", unit="img", file=sys.stderr, disable=not progress, leave=False)
    for item in bar:
        img, _, reason = decode_file(item.path)
        if img is None:
            report.skipped.append(SkippedFile(item.path, reason))
            continue
        report.usable_paths.append(item.path)
        report.sizes[img.size] += 1
        report.captioned += bool(item.caption)
        if item.label is not None:
            per_class[item.label] += 1
    if src.class_names is not None:
        report.class_counts = {name: per_class[i] for i, name in enumerate(src.class_names)}
    return report


def _check_arrays(src: ArraySource) -> CheckReport:
    """Array rows are all usable once the arrays validate (done by ``scan_source``)."""
    n, h, w = (int(d) for d in src.images.shape[:3])
    report = CheckReport(src.path, src.kind, n, [f"{src.path}#{i}" for i in range(n)], [])
    report.sizes[(w, h)] = n
    report.has_captions = src.captions is not None
    report.captioned = sum(bool(c.strip()) for c in src.captions or [])
    if src.labels is not None:
        counts = Counter(int(v) for v in src.labels)
        names = src.class_names or [str(i) for i in range(max(counts) + 1 if counts else 0)]
        report.class_counts = {name: counts.get(i, 0) for i, name in enumerate(names)}
    return report


# ---------------------------------------------------------------- formatting


def _bar(count: int, most: int) -> str:
    return "#" * max(1, round(_BAR_WIDTH * count / most)) if count else ""


def _size_lines(sizes: Counter) -> list[str]:
    """Most common exact sizes, then a histogram of the shorter side in power-of-two bins."""
    lines = ["image sizes (width x height, before resizing):"]
    common = sizes.most_common(_SIZE_ROWS)
    for (w, h), n in common:
        lines.append(f"  {f'{w}x{h}':>11} {n:>7}  {_bar(n, common[0][1])}")
    rest = sum(sizes.values()) - sum(n for _, n in common)
    if rest:
        lines.append(f"  {'other':>11} {rest:>7}  ({len(sizes) - len(common)} more sizes)")
    bins: Counter = Counter()
    for (w, h), n in sizes.items():
        bins[sum(min(w, h) >= e for e in _SIDE_EDGES)] += n
    inner = [f"{a}-{b - 1}" for a, b in zip(_SIDE_EDGES, _SIDE_EDGES[1:])]
    labels = [f"<{_SIDE_EDGES[0]}", *inner, f">={_SIDE_EDGES[-1]}"]
    lines.append("shorter side (px):")
    top = max(bins.values())
    lines += [f"  {labels[b]:>11} {bins[b]:>7}  {_bar(bins[b], top)}" for b in sorted(bins)]
    return lines


def _listing(title: str, entries: list[SkippedFile], max_listed: int | None) -> list[str]:
    """A titled list of 'path: reason' lines, cut at ``max_listed`` (None = all)."""
    if not entries:
        return []
    shown = entries if max_listed is None else entries[:max_listed]
    lines = [f"{title} ({len(entries)}):"]
    lines += [f"  {escape_path(e.path)}: {e.reason}" for e in shown]
    if len(shown) < len(entries):
        lines.append(f"  ... and {len(entries) - len(shown)} more")
    return lines


def _unit(report: CheckReport) -> str:
    return "array rows" if report.source_kind in ("idx", "npz") else "files"


def format_report(report: CheckReport, *, max_listed: int | None = 50) -> str:
    """Human-readable, one-path-per-line text of a CheckReport."""
    lines = [
        f"dataset: {escape_path(report.path)} ({report.source_kind})",
        f"usable: {report.usable} of {report.total} {_unit(report)} ({len(report.skipped)} skipped)",
    ]
    if report.unlisted:
        lines.append(f"{unlisted_summary(report.unlisted)}:")
        lines += [f"  {escape_path(p)}" for p in report.unlisted[:UNLISTED_SHOWN]]
        if len(report.unlisted) > UNLISTED_SHOWN:
            lines.append(f"  ... and {len(report.unlisted) - UNLISTED_SHOWN} more")
    if report.has_captions:
        pct = 100.0 * report.captioned / report.usable if report.usable else 0.0
        lines.append(f"captions: {report.captioned} of {report.usable} usable images captioned ({pct:.1f}%)")
    else:
        lines.append("captions: none (unconditional or class-conditional source)")
    if report.class_counts is not None:
        listed = ", ".join(f"{name}: {n}" for name, n in report.class_counts.items())
        lines.append(f"classes: {len(report.class_counts)} ({listed})")
    if report.sizes:
        lines += _size_lines(report.sizes)
    if report.resolution is not None:
        lines.append(f"at resolution {report.resolution}: {report.smaller} images smaller than "
                     f"{report.resolution} px will be upscaled; all are centre-cropped to square")
    lines += _listing("skipped", report.skipped, max_listed)
    lines += _listing("caption problems (caption replaced by \"\")", report.caption_issues, max_listed)
    return "\n".join(lines)
