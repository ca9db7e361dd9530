"""VQ-BeT hyperparameters. Every field is saved in the checkpoint's config.json."""

from __future__ import annotations

from dataclasses import dataclass

from policies.io_config import PolicyIOConfig


@dataclass(frozen=True)
class VQBeTConfig(PolicyIOConfig):
    # --- chunking ---
    n_obs_steps: int = 2
    """Observation tokens fed to the GPT (current step included)."""
    n_action_pred_token: int = 3
    """Learned action-query tokens after the observations; query k (1..P) predicts the chunk starting at t+k."""
    action_chunk_size: int = 8
    """Actions per token, i.e. the length the residual VQ tokenizes."""
    horizon: int = 12
    """Actions returned by predict_action_chunk, starting at the oldest observation step. At most
    n_obs_steps + n_action_pred_token + action_chunk_size - 1 (the span the tokens cover)."""
    n_action_steps: int = 8
    """Actions executed per plan; they all come from the current step's chunk."""
    average_overlapping_chunks: bool = False
    """At inference, average every predicted chunk that covers a step (the original VQ-BeT's
    temporal ensembling) instead of taking the current token's chunk."""

    # --- residual VQ action tokenizer (phase 1) ---
    vq_train_steps: int = 250
    """Optimizer steps spent training the tokenizer at the start of the run; then it is frozen."""
    vq_layers: int = 2
    """Residual quantizer layers (primary, secondary)."""
    vq_codes: int = 16
    """Codes per layer."""
    vq_latent_dim: int = 128
    """Latent size of the tokenizer."""
    vq_hidden_dim: int = 128
    """MLP width of the tokenizer encoder and decoder."""
    vq_commitment_weight: float = 5.0
    """Weight of the commitment loss next to the L1 reconstruction."""
    vq_ema_decay: float = 0.99
    """EMA decay of codebook updates."""
    vq_dead_code_threshold: float = 0.03
    """A code whose EMA usage count falls below this is restarted from a random encoder output."""
    vq_lr: float = 1e-3
    """Learning rate of the tokenizer's optimizer group."""

    # --- GPT and heads (phase 2) ---
    gpt_layers: int = 4
    """Transformer layers."""
    gpt_heads: int = 4
    """Attention heads."""
    gpt_dim: int = 128
    """Token width."""
    gpt_dropout: float = 0.1
    """Dropout in the transformer."""
    head_hidden_dim: int = 256
    """Width of the code and offset heads."""
    primary_code_loss_weight: float = 5.0
    """Focal-loss weight of the first (primary) code."""
    secondary_code_loss_weight: float = 0.5
    """Focal-loss weight of the second code."""
    focal_gamma: float = 2.0
    """Focal loss gamma."""
    offset_loss_weight: float = 100.0
    """Weight of the L1 loss on (decoded codes + predicted offset) vs the true chunk."""
    temperature: float = 0.1
    """Softmax temperature when sampling codes (0: argmax)."""
    sequential_code_selection: bool = True
    """Pick the secondary code conditioned on the sampled primary code (else both from the features)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_obs_steps < 1 or self.n_action_pred_token < 1 or self.n_action_steps < 1:
            raise ValueError("n_obs_steps, n_action_pred_token and n_action_steps must be >= 1")
        if self.action_chunk_size > self.horizon:
            raise ValueError(f"action_chunk_size={self.action_chunk_size} is longer than horizon={self.horizon}")
        if self.horizon > self.action_window:
            raise ValueError(
                f"horizon={self.horizon} exceeds what the tokens cover: n_obs_steps + n_action_pred_token + "
                f"action_chunk_size - 1 = {self.action_window}"
            )
        if self.n_action_steps > self.action_chunk_size:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be <= action_chunk_size={self.action_chunk_size}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(f"horizon={self.horizon} must be >= n_obs_steps - 1 + n_action_steps = {self.n_obs_steps - 1 + self.n_action_steps}")
        if self.vq_layers < 2:
            raise ValueError("vq_layers must be >= 2 (primary and secondary codes)")
        if self.gpt_dim % self.gpt_heads:
            raise ValueError(f"gpt_dim={self.gpt_dim} must be divisible by gpt_heads={self.gpt_heads}")

    @property
    def n_pred_tokens(self) -> int:
        """Tokens whose outputs predict a chunk: every observation token, then the action queries."""
        return self.n_obs_steps + self.n_action_pred_token

    @property
    def action_window(self) -> int:
        """Actions a training window needs: every predicting token's full chunk."""
        return self.n_pred_tokens + self.action_chunk_size - 1
