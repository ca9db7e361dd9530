#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# robosuite 1.5.2 pins mink==0.0.5 (which downgrades numpy to 1.x) and pulls pynput/evdev (keyboard teleop,
# compiled against kernel headers). Our envs use neither, so install robosuite alone; its runtime
# dependencies are in pyproject.toml.
.venv/bin/python -m pip install --quiet --no-deps "robosuite==1.5.2"
# openpi-client (tests check wire compatibility with it) declares numpy<2 but runs with numpy 2; its
# websocket client needs only msgpack and websockets, which pyproject.toml installs.
.venv/bin/python -m pip install --quiet --no-deps "openpi-client==0.1.2"
