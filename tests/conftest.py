"""Shared fixtures, and the rule for comparing floats in this suite.

- **Exact** (`torch.equal`, `np.array_equal`) where both sides are computed on the same machine in the same
  test run, subprocesses included: save/load round trips, resume, served = evaluated, chunk queues, samplers,
  store round trips. Any difference there is a bug, so no tolerance hides it.
- **Tolerance** (`golden_values.assert_matches_golden`, rtol = atol = 1e-4) for golden values stored in
  `tests/golden/`: they were computed on another CPU, and another CPU rounds differently (up to 1.9e-6 seen
  between AVX2 and AVX-512 machines). A real change of 1e-3 still fails (`test_golden_check_catches_...`).
- **Exact again** for hashes of stored bytes (checkpoint fingerprints): they are not computed floats.

The header below names the machine, so a failure in CI says which CPU and library versions it ran on.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import platform  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines() -> list[str]:
    """The CPU, torch's kernel capability, threads and the versions that golden values depend on."""

    def ver(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return [
        f"machine: {cpu_model()} ({os.cpu_count()} cpus), torch cpu capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads",
        "versions: " + ", ".join(f"{p} {ver(p)}" for p in ("torch", "numpy", "mujoco", "metaworld")) + f", python {platform.python_version()}",
    ]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return machine_lines()


def pytest_sessionstart(session: pytest.Session) -> None:
    """The project runs with `-q`, which hides pytest's report header: write the machine lines anyway."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.verbosity < 0:
        for line in machine_lines():
            reporter.write_line(line)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Repeat the machine at the end, next to the failures."""
    if exitstatus != 0:
        terminalreporter.section("machine")
        for line in machine_lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def push_demos(tmp_path_factory) -> Path:
    """Two real scripted push-v3 demos in a zarr store, shared by the tests that need data."""
    from data.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("demos") / "push.zarr"
    collect(CollectConfig(env="metaworld/push-v3", episodes=2, out=path), progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_dp_checkpoint(tmp_path_factory, push_demos) -> Path:
    """A tiny Diffusion Policy (2 training steps on the push demos): a real base for the RL tests."""
    import train

    run_dir = tmp_path_factory.mktemp("tiny_dp") / "run"
    train.main(["tiny", "--env", "metaworld/push-v3", "--run-dir", str(run_dir), "--dataset", str(push_demos), "--steps", "2", "--eval-episodes", "0"])
    return (run_dir / "checkpoints" / "last").resolve()


@pytest.fixture(scope="session")
def mismatched_dp_checkpoint(tmp_path_factory) -> Path:
    """A Diffusion Policy checkpoint for 20-D states: it fits no Meta-World task (39-D)."""
    import numpy as np

    from data.normalize import Normalizer
    from policies import DiffusionConfig, DiffusionPolicy

    cfg = DiffusionConfig(state_dims=(20,), action_dim=4, down_dims=(16, 32), n_groups=4, diffusion_step_embed_dim=16, horizon=8, n_action_steps=4, num_inference_steps=3)
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit({"state": rng.normal(size=(50, 20)), "action": rng.uniform(-1, 1, (50, 4))}, cfg.normalization_modes())
    path = tmp_path_factory.mktemp("mismatched") / "base"
    DiffusionPolicy(cfg, normalizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def vqbet_tiny_checkpoint(tmp_path_factory, push_demos) -> Path:
    """A tiny VQ-BeT (2 tokenizer steps, then 2 GPT steps on the push demos), shared by every test that needs one."""
    import train

    run_dir = tmp_path_factory.mktemp("vqbet_tiny") / "run"
    train.main(["vqbet-tiny", "--env", "metaworld/push-v3", "--run-dir", str(run_dir), "--dataset", str(push_demos), "--eval-episodes", "0"])
    return run_dir.resolve()


@pytest.fixture(scope="session")
def residual_checkpoint(tmp_path_factory, tiny_dp_checkpoint) -> Path:
    """A residual policy on the tiny DP whose correction is not zero (random last layer), saved as RL would save it."""
    from envs.make import env_properties
    from policies import DiffusionPolicy, ResidualPolicy
    from policies.residual.config import for_base

    base = DiffusionPolicy.from_pretrained(tiny_dp_checkpoint)
    props = env_properties("metaworld/push-v3")
    policy = ResidualPolicy(for_base(base, props["action_low"], props["action_high"], residual_scale=0.3), base)
    torch.manual_seed(1)
    torch.nn.init.normal_(policy.residual.net[-1].weight, std=0.5)
    path = tmp_path_factory.mktemp("residual") / "ckpt"
    policy.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def dsrl_checkpoint(tmp_path_factory, tiny_dp_checkpoint) -> Path:
    """A DSRL-steered tiny DP with an untrained (random) noise actor."""
    from policies import DiffusionPolicy, SteeredPolicy
    from policies.steered.config import for_base

    base = DiffusionPolicy.from_pretrained(tiny_dp_checkpoint)
    torch.manual_seed(2)
    policy = SteeredPolicy(for_base(base, hidden_dim=32, n_layers=2), base)
    path = tmp_path_factory.mktemp("dsrl") / "ckpt"
    policy.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def point_cloud_demos(tmp_path_factory) -> Path:
    """Two real scripted push-v3 demos with Meta-World's point cloud (DP3's corner2 setup, 512 points)."""
    from data.collect import CollectConfig, collect

    path = tmp_path_factory.mktemp("pc_demos") / "push_pc.zarr"
    collect(CollectConfig(env="metaworld/push-v3", episodes=2, out=path, point_cloud=True), progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_pointcloud_checkpoint(tmp_path_factory, point_cloud_demos) -> Path:
    """A tiny sensor-only point-cloud Diffusion Policy (proprio + point cloud, 2 training steps)."""
    import train

    run_dir = tmp_path_factory.mktemp("tiny_pc") / "run"
    train.main(["pointcloud-tiny", "--env", "metaworld/push-v3", "--run-dir", str(run_dir), "--dataset", str(point_cloud_demos), "--steps", "2", "--eval-episodes", "0"])
    return (run_dir / "checkpoints" / "last").resolve()
