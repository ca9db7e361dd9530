"""Train a policy from demonstrations, then evaluate it (the library: policies/training.py).

    python train.py                                   # default preset: collect button-press-topdown-v3 demos, train DP, eval 50 episodes
    python train.py tiny --run-dir runs/smoke         # seconds-long smoke run
    python train.py vqbet --env metaworld/push-v3     # VQ-BeT instead of Diffusion Policy (presets pick the policy type)
    python train.py default --steps 8000 --policy.mlp-hidden-dim 1024 --dataset demos/push.zarr
    python train.py unet --env metaworld/push-v3      # the paper's UNet + DDPM + DDIM-10 recipe
    python train.py default --run-dir runs/x --resume # continue an interrupted run exactly
    python train.py dsrl --base runs/x --env metaworld/push-v3   # DSRL finetuning of a trained DP (rl/dsrl.py)
    python train.py residual --algo offpolicy --base runs/x --env metaworld/push-v3   # residual RL (rl/residual_*.py)
    torchrun --nproc_per_node 2 train.py default --run-dir runs/ddp   # data-parallel (DDP; gloo on CPU, NCCL on GPU)
"""

from __future__ import annotations

import sys

import tyro

from core.io import CheckpointError
from data.store import StoreError
from policies.training import PRESETS, train


def residual_main(args: list[str]) -> dict:
    algo, rest = "offpolicy", list(args)
    for i, arg in enumerate(rest):
        if arg == "--algo" or arg.startswith("--algo="):
            algo = arg.split("=", 1)[1] if "=" in arg else (rest[i + 1] if i + 1 < len(rest) else "")
            del rest[i : i + (1 if "=" in arg else 2)]
            break
    if algo == "offpolicy":
        from rl.residual_offpolicy import main as run
    elif algo == "ppo":
        from rl.residual_ppo import main as run
    else:
        raise SystemExit(f"error: --algo must be offpolicy or ppo, got {algo!r}")
    return run(rest)


def main(argv: list[str] | None = None) -> dict:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "dsrl":  # RL finetuning of a trained policy: python train.py dsrl --base <ckpt> --env ...
        from rl.dsrl import main as dsrl_main

        return dsrl_main(args[1:])
    if args and args[0] == "residual":  # python train.py residual --algo {offpolicy,ppo} --base <ckpt> --env ...
        return residual_main(args[1:])
    cfg = tyro.extras.overridable_config_cli(PRESETS, args=argv) if argv or len(sys.argv) > 1 else PRESETS["default"][1]
    try:
        return train(cfg)
    except (StoreError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
