"""VQ-BeT (Lee et al. 2024, "Behavior Generation with Latent Actions"), state observations, action chunking.

Phase 1 (the first `vq_train_steps` optimizer steps of the run): train the residual-VQ tokenizer on
action chunks. Then it is frozen and phase 2 trains a causal GPT over [observation tokens, action-query
tokens]. Each predicting token outputs a primary and a secondary code (focal loss) and a continuous
offset per code, chunk step and action dim (L1 on decoded codes + offset). The phase reached is the
`vq_steps_done` buffer, saved with the weights, so a resumed run continues in the right phase.

Token layout for n_obs_steps=n, n_action_pred_token=P, chunk C: obs tokens at times t-n+1..t, then P
queries for times t+1..t+P. Every token predicts the chunk starting at its own time (obs tokens see only
observations up to their time: the GPT is causal). Token j's chunk starts at window position j, so a
training window needs n+P+C-1 actions.

Observation tokens are built per step from every key in `state_keys` plus one `policies.vision` encoder
per camera in `image_keys`, concatenated and projected to the GPT width.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from data.normalize import Normalizer
from policies.base import Policy
from policies.vqbet.config import VQBeTConfig
from policies.vqbet.rvq import ResidualVQ, mlp


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean focal loss -(1 - p_t)^gamma * log p_t over (N, K) logits and (N,) targets."""
    log_p = F.log_softmax(logits, dim=-1).gather(-1, target[:, None]).squeeze(-1)
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


class VQBeTPolicy(Policy):
    policy_type: ClassVar[str] = "vqbet"
    config_class: ClassVar[type] = VQBeTConfig
    trains_in_phases: ClassVar[bool] = True

    def __init__(self, config: VQBeTConfig, normalizer: Normalizer) -> None:
        super().__init__(config, normalizer)
        c = config
        self.rvq = ResidualVQ(
            c.action_chunk_size, c.action_dim, c.vq_layers, c.vq_codes, c.vq_latent_dim, c.vq_hidden_dim,
            c.vq_ema_decay, c.vq_dead_code_threshold, c.vq_commitment_weight,
        )
        self.register_buffer("vq_steps_done", torch.zeros((), dtype=torch.long))
        self.obs_proj = nn.Linear(c.obs_feature_dim, c.gpt_dim)
        self.action_queries = nn.Parameter(torch.randn(c.n_action_pred_token, c.gpt_dim) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(c.n_obs_steps + c.n_action_pred_token, c.gpt_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            c.gpt_dim, c.gpt_heads, 4 * c.gpt_dim, c.gpt_dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.gpt = nn.TransformerEncoder(layer, c.gpt_layers, norm=nn.LayerNorm(c.gpt_dim), enable_nested_tensor=False)
        self.register_buffer(
            "causal_mask", nn.Transformer.generate_square_subsequent_mask(c.n_obs_steps + c.n_action_pred_token), persistent=False
        )
        chunk_numel = c.action_chunk_size * c.action_dim
        self.primary_head = mlp([c.gpt_dim, c.head_hidden_dim, c.vq_codes])
        secondary_in = c.gpt_dim + (c.vq_codes if c.sequential_code_selection else 0)
        self.secondary_head = mlp([secondary_in, c.head_hidden_dim, c.vq_codes])
        self.offset_head = mlp([c.gpt_dim, c.head_hidden_dim, c.vq_layers * c.vq_codes * chunk_numel])

    # ---- phases ----------------------------------------------------------------------------------
    @property
    def tokenizer_ready(self) -> bool:
        return int(self.vq_steps_done) >= self.config.vq_train_steps

    def finish_training_phases(self) -> None:
        self.vq_steps_done.fill_(self.config.vq_train_steps)

    def check_ready(self) -> None:
        if not self.tokenizer_ready:
            raise RuntimeError(
                f"VQ-BeT checkpoint has not finished phase 1: the action tokenizer trained "
                f"{int(self.vq_steps_done)} of {self.config.vq_train_steps} steps, so the policy cannot act; "
                "resume training past phase 1 first"
            )

    def optim_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Tokenizer and GPT in separate optimizer groups (the tokenizer has its own learning rate)."""
        rvq = list(self.rvq.parameters())
        rvq_ids = {id(p) for p in rvq}
        rest = [p for p in self.parameters() if id(p) not in rvq_ids]
        return [{"params": rvq, "lr": self.config.vq_lr, "weight_decay": 0.0}, {"params": rest, "lr": lr, "weight_decay": weight_decay}]

    # ---- network ---------------------------------------------------------------------------------
    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized obs window per key (B, n_obs_steps, d) -> token features (B, n_obs_steps + P, gpt_dim)."""
        tokens = self.obs_proj(self.obs_window_features(obs))
        queries = self.action_queries.expand(tokens.shape[0], -1, -1)
        return self.gpt(torch.cat([tokens, queries], dim=1) + self.pos_emb, mask=self.causal_mask, is_causal=True)

    def offsets_for(self, feats: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Offsets (N, C, A) of the chosen codes (N, layers), summed over layers."""
        c = self.config
        offsets = self.offset_head(feats).view(-1, c.vq_layers, c.vq_codes, c.action_chunk_size, c.action_dim)
        index = codes[:, :, None, None, None].expand(-1, -1, 1, c.action_chunk_size, c.action_dim)
        return offsets.gather(2, index).squeeze(2).sum(dim=1)

    def secondary_logits(self, feats: torch.Tensor, primary: torch.Tensor) -> torch.Tensor:
        if self.config.sequential_code_selection:
            feats = torch.cat([feats, F.one_hot(primary, self.config.vq_codes).type(feats.dtype)], dim=-1)
        return self.secondary_head(feats)

    # ---- training --------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        batch = self.normalizer.normalize_batch(batch)
        actions = batch[c.action_key]
        if actions.shape[1] < c.action_window:
            raise ValueError(f"batch {c.action_key!r} has {actions.shape[1]} steps, VQ-BeT needs a window of {c.action_window}")
        chunks = actions.unfold(1, c.action_chunk_size, 1)[:, : c.n_pred_tokens]  # (B, N, A, C)
        chunks = rearrange(chunks, "b n a c -> (b n) c a")
        if not self.tokenizer_ready:
            self.rvq.train()
            loss, metrics = self.rvq(chunks)
            self.vq_steps_done += 1
            if self.tokenizer_ready:
                self.rvq.requires_grad_(False)
                print(f"VQ-BeT phase 1 done after {int(self.vq_steps_done)} steps: {metrics['vq_codes_used_frac']:.0%} of codes used by the last batch")
                metrics["log_now"] = True
            return loss, {"loss": loss.item(), "phase": 1.0, **metrics}
        self.rvq.eval().requires_grad_(False)
        feats = self.features({k: batch[k][:, : c.n_obs_steps] for k in c.obs_keys}).flatten(0, 1)
        codes = self.rvq.encode(chunks)
        primary = focal_loss(self.primary_head(feats), codes[:, 0], c.focal_gamma)
        secondary = focal_loss(self.secondary_logits(feats, codes[:, 0]), codes[:, 1], c.focal_gamma)
        predicted = self.rvq.decode(codes) + self.offsets_for(feats, codes)
        offset = F.l1_loss(predicted, chunks)
        loss = c.primary_code_loss_weight * primary + c.secondary_code_loss_weight * secondary + c.offset_loss_weight * offset
        return loss, {"loss": loss.item(), "phase": 2.0, "primary_focal": primary.item(), "secondary_focal": secondary.item(), "offset_l1": offset.item()}

    # ---- inference -------------------------------------------------------------------------------
    def sample_codes(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.config.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = F.softmax(logits / self.config.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None) -> torch.Tensor:
        """VQ-BeT has no diffusion latent: `noise` must be None (sampling uses the torch RNG)."""
        if noise is not None:
            raise ValueError("VQ-BeT samples discrete codes and takes no initial noise; pass noise=None")
        self.check_ready()
        c = self.config
        feats = self.features(self.normalize_obs(obs))
        batch, n_tok = feats.shape[:2]
        feats = feats.flatten(0, 1)
        primary = self.sample_codes(self.primary_head(feats))
        secondary = self.sample_codes(self.secondary_logits(feats, primary))
        codes = torch.stack([primary, secondary], dim=-1)
        if c.vq_layers > 2:  # deeper layers are refined by the offsets only; use their most common code 0
            codes = torch.cat([codes, codes.new_zeros(codes.shape[0], c.vq_layers - 2)], dim=-1)
        chunks = (self.rvq.decode(codes) + self.offsets_for(feats, codes)).view(batch, n_tok, c.action_chunk_size, c.action_dim)
        return self.normalizer.unnormalize(c.action_key, self.assemble(chunks))

    def assemble(self, chunks: torch.Tensor) -> torch.Tensor:
        """Token chunks (B, N, C, A) -> one action sequence (B, horizon, A) over window positions.

        Default: the current step's token (position n_obs_steps-1) supplies the executed actions; earlier
        positions come from their own token. With `average_overlapping_chunks`, every position is the mean
        of all chunks covering it.
        """
        c = self.config
        batch, n_tok, size, dim = chunks.shape
        out = chunks.new_zeros(batch, c.horizon, dim)
        count = chunks.new_zeros(1, c.horizon, 1)
        if c.average_overlapping_chunks:
            for j in range(n_tok):
                end = min(j + size, c.horizon)
                if j < end:
                    out[:, j:end] += chunks[:, j, : end - j]
                    count[:, j:end] += 1
            return out / count.clamp(min=1)
        now = c.n_obs_steps - 1
        for p in range(c.horizon):
            j = min(p, now) if p < now + size else p - size + 1  # latest-starting chunk once the current one ends
            out[:, p] = chunks[:, min(j, n_tok - 1), p - min(j, n_tok - 1)]
        return out
