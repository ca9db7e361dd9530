"""RL finetuning of frozen behaviour-cloned policies: DSRL (rl/dsrl.py); shared pieces in rl/chunk_env.py, rl/replay.py, rl/networks.py."""
