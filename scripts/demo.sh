#!/usr/bin/env bash
# Command 1 of the README: install into .venv/ and run the main job end to end — train a small
# text-to-image diffusion model on the bundled emoji subset (32 px) and write a labelled grid.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh minilm,studio
exec .venv/bin/limner demo "$@"
