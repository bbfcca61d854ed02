#!/usr/bin/env bash
# Build .whl/: the wheels scripts/gpu_check.sh installs on a GPU machine that has PyTorch,
# Triton, torchdiffeq, einops, safetensors, scipy, scikit-learn/-image and matplotlib but not
# the rest of scorekit's dependencies (and no network). Run here, in the repo root, with pip
# able to reach PyPI; the folder is git-ignored (.git/info/exclude) and travels by `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
# Pure-Python wheels, pinned to the versions CI tests; the target is CPython 3.12 on x86_64.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 hydra-core==1.3.8 omegaconf==2.3.1 \
  torchsde==0.2.6 trampoline==0.1.2
# antlr4-python3-runtime 4.9.3 (hydra's parser) is published as a source archive only.
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -1 .whl
