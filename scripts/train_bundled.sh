#!/usr/bin/env bash
# Train limner's bundled emoji model with limner itself (limner.bundled.recipe: `limner train` on
# the captioned Noto emoji set at 64 px, frozen MiniLM text encoder, a wall-clock budget with the
# cosine LR decay fitted to it) and export it as a sampling-only run folder.
#
#   scripts/train_bundled.sh --data ../shared/data/noto-emoji --device cuda --minutes 6 \
#       --out runs/bundled-emoji --export src/limner/bundled/emoji      # one GPU: minutes
#   scripts/train_bundled.sh --data ../shared/data/noto-emoji --device cpu --minutes 240 \
#       --out runs/bundled-emoji --export src/limner/bundled/emoji      # 2 CPU cores: hours
#
# PYTHON=python3 uses another interpreter than .venv/bin/python (with PYTHONPATH=src).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m limner.bundled.recipe "$@"
