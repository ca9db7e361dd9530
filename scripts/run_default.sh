#!/usr/bin/env bash
# Install (scripts/setup.sh), then run the default job: collect demos, train Diffusion Policy, evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}"
.venv/bin/python train.py "$@"
