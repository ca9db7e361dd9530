"""Simulated environments. MuJoCo picks its OpenGL backend when it is first imported, so the headless default
(`MUJOCO_GL=egl` unless the user set one) is applied here, before any env module imports mujoco."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
