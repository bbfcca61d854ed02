#!/usr/bin/env bash
# Check every GPU path on a fresh machine with one NVIDIA GPU, in about 8 minutes:
#
#   bash scripts/gpu_check.sh OUT_DIR            # the GPU tests, hot-loop and closed-form speed
#                                                # tables on CUDA, a short digits_edm run + FD row
#   bash scripts/gpu_check.sh --dry-run OUT_DIR  # the same plan on the CPU with tiny sizes (CI)
#
# Packages the machine lacks travel as wheels in .whl/ beside the tree (README, "GPU check");
# they are installed into a private folder, never over the machine's own torch.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE=${SCOREKIT_WHEEL_SITE:-/tmp/scorekit-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 3
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
DRY=()
if [ "${1:-}" = "--dry-run" ]; then DRY=(--dry-run); shift; fi
if [ $# -ne 1 ]; then
  echo "usage: bash scripts/gpu_check.sh [--dry-run] OUT_DIR" >&2
  exit 2
fi
exec "$PY" scripts/gpu_check.py "$1" "${DRY[@]}"
