"""Chapter 10 — image tokens: vector quantisation and the VQ-VAE (van den Oord et al., 2017).

A :class:`VectorQuantizer` replaces every encoder vector by its nearest codebook vector and passes
the gradient straight through (Bengio et al., 2013); a :class:`VQVAE` turns a 32×32 image into an
8×8 grid of integer codes and back; :func:`train_vqvae` trains one (optionally restarting dead codes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmlearn._validate import require_floating, require_int, require_positive, require_rank

__all__ = ["nearest_codes", "VectorQuantizer", "codebook_stats", "VQVAE", "VQHistory", "train_vqvae"]


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for every row of ``z``: ``argmin_k ‖z_n − e_k‖²``.

    Uses ``‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²``: one matrix product instead of an (N, K, D) tensor.
    ``z`` (N, D), ``codebook`` (K, D) -> LongTensor (N,).
    """
    z = require_floating(require_rank(z, "z", 2, "(N, D)"), "z")
    codebook = require_floating(require_rank(codebook, "codebook", 2, "(K, D)"), "codebook")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z must be (N, D) with D = {codebook.shape[1]} (the codebook's D), "
                         f"got shape {tuple(z.shape)}")
    d = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(1)  # (N, K)
    return d.argmin(1)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation with a learned codebook ``e`` (K, D) (van den Oord et al., 2017).

    ``forward(z_e (B, D, H, W)) -> (z_q (B, D, H, W), codes (B, H, W), loss)`` where, with sg = stop-gradient
    and means over all B·H·W·D numbers,

        loss = mean((sg[z_e] − e_codes)²) + β · mean((z_e − sg[e_codes])²)     (codebook + commitment)
        z_q  = z_e + sg[e_codes − z_e]      (straight-through: value e_codes, gradient dL/dz_q passed to z_e)
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.num_codes, self.dim = require_int(num_codes, "num_codes"), require_int(dim, "dim")
        self.beta = float(require_positive(beta, "beta", allow_zero=True))
        self.codebook = nn.Parameter(torch.empty(self.num_codes, self.dim).uniform_(-1 / self.num_codes,
                                                                                    1 / self.num_codes))

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        z = require_floating(require_rank(z, "z", 4, "(B, D, H, W)"), "z")
        if z.shape[1] != self.dim:
            raise ValueError(f"z must be (B, D, H, W) with D = {self.dim}, got shape {tuple(z.shape)}")
        return z.permute(0, 2, 3, 1).reshape(-1, self.dim)  # (B·H·W, D)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, H, W) -> codebook vectors as a feature map (B, D, H, W)."""
        codes = require_rank(codes, "codes", 3, "(B, H, W)")
        if codes.dtype != torch.long:
            raise ValueError(f"codes must be a LongTensor (B, H, W), got dtype {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(f"codes must be in [0, {self.num_codes}), got values in "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return self.codebook[codes].permute(0, 3, 1, 2)  # (B, D, H, W)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = self._flat(z)                                          # (N, D), N = B·H·W
        codes = nearest_codes(flat.detach(), self.codebook.detach())  # (N,)
        e = self.codebook[codes]                                      # (N, D), gradient reaches the codebook
        loss = F.mse_loss(e, flat.detach()) + self.beta * F.mse_loss(flat, e.detach())
        B, _, H, W = z.shape
        e_map = e.reshape(B, H, W, self.dim).permute(0, 3, 1, 2)     # (B, D, H, W)
        z_q = z + (e_map - z).detach()                                # straight-through estimator
        return z_q, codes.reshape(B, H, W), loss

    @torch.no_grad()
    def restart_dead_codes_(self, z: torch.Tensor, counts: torch.Tensor,
                            generator: torch.Generator | None = None) -> int:
        """Move every code with ``counts == 0`` onto a random encoder vector of ``z`` (B, D, H, W).

        Returns the number of codes moved. ``counts`` (K,) = how often each code was chosen lately.
        """
        flat = self._flat(z)
        dead = (require_rank(counts, "counts", 1, "(K,)") == 0).nonzero().flatten()
        if counts.shape[0] != self.num_codes:
            raise ValueError(f"counts must be (K,) with K = {self.num_codes}, got shape {tuple(counts.shape)}")
        if len(dead):
            pick = torch.randint(0, flat.shape[0], (len(dead),), generator=generator, device="cpu").to(flat.device)
            self.codebook[dead] = flat[pick]
        return len(dead)


def codebook_stats(codes: torch.Tensor, num_codes: int) -> dict[str, object]:
    """Usage of a codebook over a set of codes (any shape).

    ``counts`` (K,), ``perplexity`` = exp(−Σ_k p_k log p_k) with p_k the fraction of positions using code k
    (K if all codes are used equally, 1 if one code is used everywhere), ``dead`` = #codes never used.
    """
    num_codes = require_int(num_codes, "num_codes")
    codes = codes.reshape(-1)
    if codes.numel() == 0 or codes.min() < 0 or codes.max() >= num_codes:
        raise ValueError(f"codes must be non-empty with values in [0, {num_codes}), got {codes.numel()} codes")
    counts = torch.bincount(codes.cpu(), minlength=num_codes)  # (K,)
    p = counts.double() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"counts": counts, "perplexity": float(entropy.exp()), "dead": int((counts == 0).sum())}


class VQVAE(nn.Module):
    """Conv encoder (two stride-2 convolutions: 32×32 -> 8×8) → :class:`VectorQuantizer` → conv decoder.

    ``forward(images (B, 3, H, W) in [0, 1]) -> (recon (B, 3, H, W), codes (B, H/4, W/4), vq_loss)``;
    ``encode(images) -> codes``, ``decode(codes) -> images``.
    """

    def __init__(self, num_codes: int = 64, code_dim: int = 16, width: int = 32, beta: float = 0.25,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = require_int(in_channels, "in_channels")
        w = require_int(width, "width")
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, stride=2, padding=1), nn.ReLU(),   # H/2
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.ReLU(),             # H/4
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, code_dim, 1))                                      # (B, code_dim, H/4, W/4)
        self.quantizer = VectorQuantizer(num_codes, code_dim, beta)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, w, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.ReLU(),    # H/2
            nn.ConvTranspose2d(w, in_channels, 4, stride=2, padding=1))     # H

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = require_floating(require_rank(images, "images", 4, "(B, C, H, W)"), "images")
        if images.shape[1] != self.in_channels or images.shape[2] % 4 or images.shape[3] % 4:
            raise ValueError(f"images must be (B, {self.in_channels}, H, W) with H, W divisible by 4, "
                             f"got shape {tuple(images.shape)}")
        return images

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_e = self.encoder(self._images(images))   # (B, D, h, w)
        z_q, codes, vq_loss = self.quantizer(z_e)
        return self.decoder(z_q), codes, vq_loss

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> codes (B, H/4, W/4)."""
        return self.quantizer(self.encoder(self._images(images)))[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> images (B, C, 4h, 4w) in [0, 1]."""
        return self.decoder(self.quantizer.lookup(codes)).clamp(0, 1)


@dataclass
class VQHistory:
    """Per-step training curves of :func:`train_vqvae`."""

    recon: list[float] = field(default_factory=list)     # reconstruction MSE per step
    vq: list[float] = field(default_factory=list)        # codebook + β·commitment loss per step
    restarted: list[int] = field(default_factory=list)   # codes restarted at each restart step


def train_vqvae(images: torch.Tensor, *, num_codes: int = 64, code_dim: int = 16, width: int = 32,
                beta: float = 0.25, steps: int = 600, batch_size: int = 64, lr: float = 2e-3,
                restart_dead: bool = False, restart_every: int = 50, seed: int = 0,
                device: torch.device | str | None = None, progress: bool = True) -> tuple[VQVAE, VQHistory]:
    """Train a :class:`VQVAE` on ``images`` (N, 3, H, W) in [0, 1] with Adam on MSE(recon, x) + vq_loss.

    ``restart_dead=True``: every ``restart_every`` steps, codes unused since the last restart are moved onto
    random encoder outputs of the current batch (the "codebook reset" intervention against dead codes).
    The initialisation and the batches come from ``seed`` (plus the MMLEARN_SEED offset).
    """
    from mmlearn.device import seed_everything
    images = require_floating(require_rank(images, "images", 4, "(N, C, H, W)"), "images")
    steps, batch_size = require_int(steps, "steps"), require_int(batch_size, "batch_size")
    gen = torch.Generator().manual_seed(seed_everything(seed))
    device = torch.device(device) if device is not None else images.device
    model = VQVAE(num_codes, code_dim, width, beta, in_channels=images.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history, counts = VQHistory(), torch.zeros(num_codes, dtype=torch.long)
    for step in tqdm(range(steps), desc="VQ-VAE", disable=not progress, mininterval=1.0):
        x = images[torch.randint(0, len(images), (batch_size,), generator=gen)].to(device)
        recon, codes, vq_loss = model(x)
        rec = F.mse_loss(recon, x)
        opt.zero_grad()
        (rec + vq_loss).backward()
        opt.step()
        history.recon.append(rec.item())
        history.vq.append(vq_loss.item())
        counts += torch.bincount(codes.flatten().cpu(), minlength=num_codes)
        if restart_dead and (step + 1) % restart_every == 0 and step + 1 < steps:
            with torch.no_grad():
                z_e = model.encoder(x)
            history.restarted.append(model.quantizer.restart_dead_codes_(z_e, counts, gen))
            counts.zero_()
    return model.eval(), history
