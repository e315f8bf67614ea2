#!/usr/bin/env bash
# Create .venv/ in the project root and install limner into it (editable), with the extras
# named in $1 (comma-separated, e.g. "dev,minilm"). Re-running is cheap: nothing is reinstalled
# unless pyproject.toml or the extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.limner-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) [$extras]"
if [[ -f "$stamp" ]] && grep -qxF -- "$want" "$stamp"; then
  exit 0
fi
echo "installing limner into .venv (torch 2.13.0 CPU build first)..."
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and exactly: any looser spec pulls the CUDA build (several GB).
.venv/bin/python -m pip install --quiet "torch==2.13.0"
spec="."
[[ -n "$extras" ]] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet -e "$spec"
echo "$want" >> "$stamp"
echo "installed: $(.venv/bin/limner --version)"
