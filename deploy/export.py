"""Bundle a checkpoint into one directory that loads with only `policies/` and its runtime dependencies.

    python -m deploy.export --checkpoint runs/push-v3-diffusion-seed0 --out bundles/push-v3

Layout:
    checkpoint/        the policy checkpoint (safetensors + JSON; wrappers include their base)
    src/policies/      the policy code; src/core/io.py, src/core/window.py and src/data/normalize.py (what it imports, nothing else)
    load_policy.py     `from load_policy import load; policy = load()`, or run it for a self-check
    requirements.txt   torch, torchvision, safetensors, numpy, diffusers, einops
    manifest.json      sha256 of every file, the policy's fingerprint, and the git commit it came from

Written to a temporary directory and renamed, so a crash never leaves a bundle that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro

from core.checkpoint import resolve_checkpoint
from core.io import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ["torch>=2.2", "torchvision>=0.17", "safetensors>=0.4", "numpy>=1.24", "diffusers>=0.30", "einops>=0.7"]
LOADER = '''"""Load the bundled policy with only ./src on the path:  python load_policy.py  (prints a self-check)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "src"))

from policies.base import Policy  # noqa: E402
from policies.diffusion.compile import compile_sampling  # noqa: E402


def load(device: str = "cpu", compile: bool = True) -> Policy:
    """The bundled policy; `compile` samples through the TorchScript graph that eval.py and the server use."""
    policy = Policy.from_pretrained(HERE / "checkpoint", map_location=device)
    if compile:
        compile_sampling(policy)
    return policy


if __name__ == "__main__":
    policy = load()
    print(policy.policy_type, policy.fingerprint())
'''


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    """Checkpoint dir or run dir (its checkpoints/last)."""
    out: Path
    """Bundle directory to create (must not exist)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_bundle(checkpoint: Path, out: Path) -> Path:
    from policies.base import Policy

    ckpt = resolve_checkpoint(checkpoint)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new bundle directory")
    policy = Policy.from_pretrained(ckpt)  # refuses a broken checkpoint before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(ckpt, tmp / "checkpoint", ignore=shutil.ignore_patterns("videos", "eval_*.json", "train_state"))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "training.py")  # the training loop stays behind
        shutil.copytree(ROOT / "policies", tmp / "src" / "policies", ignore=ignore)
        (tmp / "src" / "core").mkdir(parents=True)
        (tmp / "src" / "core" / "__init__.py").write_text("")
        shutil.copy2(ROOT / "core" / "io.py", tmp / "src" / "core" / "io.py")
        shutil.copy2(ROOT / "core" / "window.py", tmp / "src" / "core" / "window.py")
        (tmp / "src" / "data").mkdir()
        (tmp / "src" / "data" / "__init__.py").write_text('"""Only the normalizer: the bundle carries no dataset code."""\n')
        shutil.copy2(ROOT / "data" / "normalize.py", tmp / "src" / "data" / "normalize.py")
        (tmp / "load_policy.py").write_text(LOADER)
        (tmp / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
        files = {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"policy_type": policy.policy_type, "fingerprint": policy.fingerprint(), "source_checkpoint": str(ckpt), "git_commit": git_commit(), "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def verify_bundle(bundle: Path) -> None:
    """Raise if a bundled file is missing or differs from the manifest."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        path = bundle / name
        if not path.is_file():
            raise CheckpointError(f"{bundle}: {name} is missing")
        if sha256(path) != digest:
            raise CheckpointError(f"{bundle}: {name} does not match manifest.json (sha256 differs)")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    cfg = tyro.cli(ExportConfig)
    try:
        out = export_bundle(cfg.checkpoint, cfg.out)
    except (CheckpointError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
