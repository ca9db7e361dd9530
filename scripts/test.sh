#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the test suite on CPU with offscreen EGL rendering.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}"
.venv/bin/python -m pytest tests "$@"
