"""Residual VQ action tokenizer: MLP encoder over an action chunk, residual EMA codebooks, MLP decoder.

Codebooks are buffers updated by exponential moving averages of the encoder outputs assigned to them
(no gradient), and a code whose usage count decays below a threshold is restarted from a random encoder
output of the current batch ("dead-code handling"). Loss: L1 reconstruction + commitment_weight * MSE
between encoder outputs and their (stop-gradient) quantization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class EMACodebook(nn.Module):
    def __init__(self, n_codes: int, dim: int, decay: float, dead_threshold: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.decay, self.dead_threshold, self.eps = decay, dead_threshold, eps
        self.register_buffer("embed", torch.zeros(n_codes, dim))
        self.register_buffer("embed_avg", torch.zeros(n_codes, dim))
        self.register_buffer("cluster_size", torch.zeros(n_codes))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, dim) -> code index (N,) of the closest codebook entry."""
        return torch.cdist(x, self.embed).argmin(dim=-1)

    @torch.no_grad()
    def update(self, x: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.embed.shape[0]).type(x.dtype)
        self.cluster_size.lerp_(onehot.sum(0), 1 - self.decay)
        self.embed_avg.lerp_(onehot.T @ x, 1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.embed.shape[0] * self.eps) * n
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        dead = self.cluster_size < self.dead_threshold
        if dead.any():
            picks = x[torch.randint(0, x.shape[0], (int(dead.sum()),), device=x.device)]
            self.embed[dead] = picks
            self.embed_avg[dead] = picks
            self.cluster_size[dead] = 1.0

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        picks = x[torch.randint(0, x.shape[0], (self.embed.shape[0],), device=x.device)]
        self.embed.copy_(picks)
        self.embed_avg.copy_(picks)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)


class ResidualVQ(nn.Module):
    """Tokenizes chunks (N, chunk, action_dim) into `layers` codes each, and decodes codes back."""

    def __init__(
        self, chunk: int, action_dim: int, layers: int, codes: int, latent_dim: int, hidden_dim: int,
        decay: float, dead_threshold: float, commitment_weight: float,
    ) -> None:
        super().__init__()
        self.chunk, self.action_dim, self.commitment_weight = chunk, action_dim, commitment_weight
        self.encoder = mlp([chunk * action_dim, hidden_dim, hidden_dim, latent_dim])
        self.decoder = mlp([latent_dim, hidden_dim, hidden_dim, chunk * action_dim])
        self.codebooks = nn.ModuleList(EMACodebook(codes, latent_dim, decay, dead_threshold) for _ in range(layers))

    def quantize(self, latent: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """latent (N, D) -> (quantized sum (N, D), codes (N, layers), commitment loss)."""
        residual, quantized, codes, commit = latent, torch.zeros_like(latent), [], latent.new_zeros(())
        for book in self.codebooks:
            if update and not bool(book.initialized):
                book.init_from(residual.detach())
            idx = book.nearest(residual.detach())
            q = book.embed[idx]
            if update:
                book.update(residual.detach(), idx)
            commit = commit + F.mse_loss(residual, q.detach())
            quantized = quantized + q
            residual = residual - q.detach()
            codes.append(idx)
        return quantized, torch.stack(codes, dim=-1), commit

    def forward(self, chunks: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Phase-1 loss on chunks (N, chunk, action_dim); updates the codebooks in training mode."""
        latent = self.encoder(chunks.flatten(1))
        quantized, codes, commit = self.quantize(latent, update=self.training)
        straight_through = latent + (quantized - latent).detach()
        recon = self.decoder(straight_through).view_as(chunks)
        recon_l1 = F.l1_loss(recon, chunks)
        metrics = {"vq_recon_l1": recon_l1.item(), "vq_commit": commit.item(), "vq_codes_used_frac": self.used_fraction(codes)}
        return recon_l1 + self.commitment_weight * commit, metrics

    @torch.no_grad()
    def encode(self, chunks: torch.Tensor) -> torch.Tensor:
        """(N, chunk, action_dim) -> codes (N, layers)."""
        return self.quantize(self.encoder(chunks.flatten(1)), update=False)[1]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, layers) -> chunks (N, chunk, action_dim)."""
        latent = sum(book.embed[codes[:, i]] for i, book in enumerate(self.codebooks))
        return self.decoder(latent).view(-1, self.chunk, self.action_dim)

    def used_fraction(self, codes: torch.Tensor) -> float:
        """Fraction of codes, averaged over layers, that `codes` (N, layers) actually use."""
        n_codes = self.codebooks[0].embed.shape[0]
        return sum(codes[:, i].unique().numel() for i in range(codes.shape[1])) / (codes.shape[1] * n_codes)
