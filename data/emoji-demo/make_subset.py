"""Rebuild limner's bundled demo dataset (data/emoji-demo) from ../shared/data/noto-emoji.

The subset is chosen so that a small text-to-image diffusion model learns it visibly in a few
minutes of CPU training at 32 px: a few families with strong shared structure, inside which the
prompt decides something visible (colour, expression, gesture, skin tone):

- yellow "... face" smileys (single code points; animal, moon, sun, clock and person faces left out)
- hearts of different colours and styles
- coloured circles, squares, diamonds and triangles
- hand gestures, each in its default yellow and in dark skin tone (one tone keeps the set small
  enough to learn in minutes while the prompt still decides the colour)

The selection is a pure function of metadata.jsonl (sorted, no randomness), so running this
again reproduces the same files. Usage, from the repository root:

    python data/emoji-demo/make_subset.py [--source ../shared/data/noto-emoji]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "noto-emoji"

NOT_SMILEYS = (
    "moon", "sun ", "clock", "wind", "mouse", "cow", "tiger", "rabbit", "cat ", "cat face", "dragon",
    "horse", "monkey", "dog", "pig", "frog", "hamster", "wolf", "bear", "panda", "lion", "unicorn",
    "fox", "giraffe", "zebra", "robot", "person", "massage", "face palm", "gesture", "dotted line",
)
HAND_WORDS = ("hand", "index", "fist", "thumbs", "victory", "fingers", "palm", "sign of the horns")
NOT_HANDS = (
    "middle finger", "writing", "holding hands", "handball", "face palm", "raising", "card index",
    "handbag", "palm tree", "handle",
)
SHAPE_ENDINGS = (" circle", " square", " diamond", " triangle")


def is_smiley(text: str) -> bool:
    """A yellow face: the word 'face' and none of the non-smiley words."""
    return "face" in text and not any(word in text for word in NOT_SMILEYS)


def is_heart(text: str) -> bool:
    """A heart symbol (not faces or people with hearts)."""
    return "heart" in text and "face" not in text and "couple" not in text and "hands" not in text


def is_shape(text: str) -> bool:
    """A geometric shape with a colour or size word."""
    return text.endswith(SHAPE_ENDINGS) and "double" not in text


def is_hand(text: str) -> bool:
    """A hand gesture (base name, before any skin-tone suffix)."""
    base = text.split(",")[0]
    return any(w in base for w in HAND_WORDS) and not any(w in base for w in NOT_HANDS)


def select(rows: list[dict]) -> list[dict]:
    """The demo rows, in metadata order."""
    chosen = []
    for row in rows:
        text, kind = row["text"], row["kind"]
        if kind == "single" and (is_smiley(text) or is_heart(text) or is_shape(text) or is_hand(text)):
            chosen.append(row)
        elif kind == "skin tone" and is_hand(text) and text.endswith(", dark skin tone"):
            chosen.append(row)
    return chosen


def main() -> None:
    """Copy the selected PNGs and write metadata.jsonl (file_name + text)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    with open(args.source / "metadata.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    chosen = select(rows)
    images = args.out / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    with open(args.out / "metadata.jsonl", "w", encoding="utf-8") as f:
        for row in chosen:
            shutil.copyfile(args.source / row["file_name"], args.out / row["file_name"])
            f.write(json.dumps({"file_name": row["file_name"], "text": row["text"]}, ensure_ascii=False) + "\n")
    print(f"wrote {len(chosen)} images to {args.out}")


if __name__ == "__main__":
    main()
