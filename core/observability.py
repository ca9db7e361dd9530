"""What a policy can see, derived from the observation keys it reads.

Three classes, from most to least informed:
- `privileged`: some key carries an object pose or the goal (Meta-World's `state` and `relative`, robosuite's
  `state`). A simulator knows these; a real robot does not.
- `goal_hidden`: object poses but no goal (Meta-World's partially observable mode: `state_goal_hidden`).
- `sensor_only`: cameras (`image_<camera>`), the point cloud and the robot's own `proprio`, plus the `task`
  one-hot of a multi-task policy (a command, not a measurement). What a deployed arm has.

A key this module does not know counts as privileged: a result is never labelled sensor-only by accident.
"""

from __future__ import annotations

from collections.abc import Iterable

PRIVILEGED = "privileged"
GOAL_HIDDEN = "goal_hidden"
SENSOR_ONLY = "sensor_only"
OBSERVABILITIES = (PRIVILEGED, GOAL_HIDDEN, SENSOR_ONLY)

SENSOR_KEYS = frozenset({"proprio", "point_cloud", "task"})
SENSOR_KEY_PREFIXES = ("image_",)
GOAL_HIDDEN_KEYS = frozenset({"state_goal_hidden"})


def key_observability(key: str) -> str:
    if key in SENSOR_KEYS or key.startswith(SENSOR_KEY_PREFIXES):
        return SENSOR_ONLY
    if key in GOAL_HIDDEN_KEYS:
        return GOAL_HIDDEN
    return PRIVILEGED


def observability(keys: Iterable[str]) -> str:
    """The class of a policy reading `keys`: the least restricted class among them."""
    classes = {key_observability(k) for k in keys}
    for cls in OBSERVABILITIES:
        if cls in classes:
            return cls
    raise ValueError("a policy reads at least one observation key")


def check_declared(declared: str, keys: Iterable[str], where: str) -> None:
    """Raise if a config declares an observability that its keys do not have ("" declares none)."""
    keys = tuple(keys)
    if declared and declared not in OBSERVABILITIES:
        raise ValueError(f"{where}: observability {declared!r} is not one of {OBSERVABILITIES}")
    derived = observability(keys)
    if declared and declared != derived:
        leaks = [k for k in keys if key_observability(k) != SENSOR_ONLY] if declared == SENSOR_ONLY else []
        detail = f"; keys {leaks} are not sensor-only" if leaks else ""
        raise ValueError(f"{where}: declared observability {declared!r}, but the keys {list(keys)} make it {derived!r}{detail}")
