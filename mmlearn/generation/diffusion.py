"""Chapter 10 — text-to-image with conditional flow matching and classifier-free guidance.

Flow matching on the straight path (rectified flow; Lipman et al. 2023, Liu et al. 2023):

    x_t = (1 - t) x_0 + t ε,   ε ~ N(0, I),   t ∈ [0, 1]       (x_0 data, x_1 = ε noise)

A network v_θ(x_t, t, c) regresses the conditional velocity d x_t / dt = ε - x_0; the minimiser of
that squared error is the marginal velocity E[ε - x_0 | x_t], whose ODE dx/dt = v carries the noise
distribution at t = 1 onto the data at t = 0. Sampling integrates it with Euler steps from t = 1 to 0.
Classifier-free guidance (Ho & Salimans 2022) trains one network with the condition replaced by a
learned null condition with probability p_uncond and samples with v_∅ + w (v_c - v_∅).

The pieces: :func:`flow_path`, :func:`flow_target`, :func:`cfg_velocity`, :func:`euler_sample`;
exact fields for Gaussian-mixture data (:func:`gaussian_mixture_velocity`) to check them against;
the image model (:class:`CaptionEncoder`, :class:`ConditionalUNet`), :func:`train_flow`,
:func:`sample_flow`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmlearn._validate import require_floating, require_int, require_positive, require_rank, require_tensor
from mmlearn.data import COLORS, RELATIONS, SHAPES, SIZES

__all__ = [
    "flow_path", "flow_target", "cfg_velocity", "euler_sample", "gaussian_mixture_velocity",
    "time_embedding", "CAPTION_VOCAB", "encode_captions", "CaptionEncoder", "ResBlock",
    "ConditionalUNet", "flow_matching_loss", "train_flow", "sample_flow",
]


# ---- the path, the target, guidance, the sampler ----------------------------------------------------


def _broadcast_t(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """t as a tensor broadcastable to x: a number, or (B,) with B = x.shape[0]."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a number or (B,) with B = {x.shape[0]}, got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, ..., 1)


def flow_path(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The straight interpolation path x_t = (1 - t) x_0 + t ε (t a number or one per row of x0)."""
    x0 = require_floating(require_min_rank1(x0, "x0"), "x0")
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
    tb = _broadcast_t(t, x0)
    return (1 - tb) * x0 + tb * eps


def flow_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The conditional velocity d x_t / dt = ε - x_0 that the network regresses."""
    x0 = require_floating(require_min_rank1(x0, "x0"), "x0")
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
    return eps - x0


def cfg_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: v = v_∅ + w (v_c - v_∅); w = 0 unconditional, w = 1 conditional."""
    require_tensor(v_cond, "v_cond")
    if require_tensor(v_uncond, "v_uncond").shape != v_cond.shape:
        raise ValueError(f"v_uncond must have the shape of v_cond {tuple(v_cond.shape)}, "
                         f"got {tuple(v_uncond.shape)}")
    require_positive(float(w), "w", allow_zero=True)
    return v_uncond + w * (v_cond - v_uncond)


def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x1: torch.Tensor,
                 steps: int, *, return_path: bool = False) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 1 (noise x1) to t = 0 with ``steps`` Euler steps:

        x_{t - h} = x_t - h v(x_t, t),   h = 1 / steps,   t = 1, 1 - h, ..., h.

    ``velocity(x, t)`` gets t as a (B,) tensor. Returns x_0, or the path (steps + 1, *x1.shape).
    """
    x = require_floating(require_min_rank1(x1, "x1"), "x1")
    steps = require_int(steps, "steps")
    h = 1.0 / steps
    path = [x]
    for k in range(steps):
        t = torch.full((x.shape[0],), 1.0 - k * h, dtype=x.dtype, device=x.device)  # (B,)
        x = x - h * velocity(x, t)
        path.append(x)
    return torch.stack(path) if return_path else x


def require_min_rank1(x: object, name: str) -> torch.Tensor:
    """A tensor with a batch axis: (B, ...)."""
    x = require_tensor(x, name)
    if x.ndim < 1:
        raise ValueError(f"{name} must be (B, ...), got shape {tuple(x.shape)}")
    return x


def gaussian_mixture_velocity(x: torch.Tensor, t: torch.Tensor | float, weights: torch.Tensor,
                              means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """The exact marginal velocity E[ε - x_0 | x_t = x] when x_0 ~ Σ_k π_k N(μ_k, s_k² I).

    Given component k, x_t ~ N((1-t) μ_k, σ_k² I) with σ_k² = (1-t)² s_k² + t², and
        E[ε - x_0 | x_t, k] = (t - (1-t) s_k²) / σ_k² · (x - (1-t) μ_k) - μ_k;
    the marginal field weighs these by the posterior γ_k(x) ∝ π_k N(x; (1-t) μ_k, σ_k² I).
    x (B, d); weights (K,); means (K, d); stds (K,). Returns (B, d).
    """
    x = require_floating(require_rank(x, "x", 2, "(B, d)"), "x")
    means = require_rank(means, "means", 2, "(K, d)").to(x)
    if means.shape[1] != x.shape[1]:
        raise ValueError(f"means must be (K, d) with d = {x.shape[1]}, got shape {tuple(means.shape)}")
    weights, stds = weights.to(x).reshape(-1), stds.to(x).reshape(-1)
    if weights.shape[0] != means.shape[0] or stds.shape[0] != means.shape[0]:
        raise ValueError(f"weights and stds must be (K,) with K = {means.shape[0]}, "
                         f"got {tuple(weights.shape)} and {tuple(stds.shape)}")
    t = _broadcast_t(t, x)                                        # () or (B, 1)
    var = (1 - t) ** 2 * stds**2 + t**2                           # (B, K) or (K,)
    centred = x[:, None, :] - (1 - t)[..., None] * means          # (B, K, d)
    log_p = weights.log() - 0.5 * (centred**2).sum(-1) / var - 0.5 * x.shape[1] * var.log()  # (B, K)
    gamma = log_p.softmax(-1)                                      # (B, K)
    v_k = ((t - (1 - t) * stds**2) / var)[..., None] * centred - means  # (B, K, d)
    return (gamma[..., None] * v_k).sum(1)                         # (B, d)


# ---- the image model ----------------------------------------------------------------------------------


def time_embedding(t: torch.Tensor, dim: int, *, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous times t (B,) in [0, 1], the formula of
    :func:`mmlearn.attention.sinusoidal_positions` at position p = scale · t:

        e[2i] = sin(p / 10000^(2i/dim)),   e[2i+1] = cos(p / 10000^(2i/dim)).   Returns (B, dim).
    """
    t = require_floating(require_rank(t, "t", 1, "(B,)"), "t")
    if require_int(dim, "dim") % 2:
        raise ValueError(f"dim must be even (sin/cos pairs), got {dim}")
    freq = 10000.0 ** (-torch.arange(0, dim, 2, device=t.device, dtype=torch.float64) / dim)  # (dim/2,)
    angle = (scale * t.to(torch.float64))[:, None] * freq            # (B, dim/2)
    return torch.stack([angle.sin(), angle.cos()], -1).flatten(-2).to(t.dtype)  # (B, dim), interleaved


CAPTION_VOCAB: tuple[str, ...] = ("<pad>", "a", *SIZES, *COLORS, *SHAPES,
                                  *sorted({w for r in RELATIONS for w in r.split()}))


def encode_captions(captions: Sequence[str], max_words: int = 10) -> torch.Tensor:
    """Word ids (B, max_words) over :data:`CAPTION_VOCAB`, padded with 0 = ``<pad>``."""
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"captions must be a list of str, got {type(captions).__name__}")
    index = {w: i for i, w in enumerate(CAPTION_VOCAB)}
    ids = torch.zeros(len(captions), max_words, dtype=torch.long)
    for b, caption in enumerate(captions):
        words = caption.split()
        unknown = [w for w in words if w not in index]
        if unknown or len(words) > max_words:
            raise ValueError(f"caption must use at most {max_words} words of CAPTION_VOCAB, got {caption!r}")
        ids[b, :len(words)] = torch.tensor([index[w] for w in words], dtype=torch.long)
    return ids


class CaptionEncoder(nn.Module):
    """c = W_2 SiLU(W_1 [E[w_1]; ...; E[w_L]]): the word embeddings *concatenated in order*.

    The grammar puts every attribute at a fixed word position, so the concatenation keeps which word
    fills which slot (a bag of words would lose which colour belongs to which shape). Rows flagged in
    ``drop`` get the learned null condition c_∅ instead (classifier-free guidance).
    """

    def __init__(self, dim: int, *, word_dim: int = 16, max_words: int = 10) -> None:
        super().__init__()
        self.max_words = max_words
        self.embed = nn.Embedding(len(CAPTION_VOCAB), word_dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(max_words * word_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, ids: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        ids = require_rank(ids, "ids", 2, "(B, max_words)")
        if ids.shape[1] != self.max_words:
            raise ValueError(f"ids must be (B, {self.max_words}), got shape {tuple(ids.shape)}")
        c = self.mlp(self.embed(ids).flatten(1))                       # (B, dim)
        if drop is not None:
            if drop.shape != (ids.shape[0],) or drop.dtype != torch.bool:
                raise ValueError(f"drop must be a bool tensor ({ids.shape[0]},), got {drop.dtype} "
                                 f"{tuple(drop.shape)}")
            c = torch.where(drop[:, None], self.null.expand_as(c), c)  # (B, dim)
        return c


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = conv(SiLU(GN(h) (1 + γ) + β)); out = h + skip(x).

    (γ, β) = Linear(e) modulate the features with the time-and-caption embedding e (FiLM).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(groups, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(min(groups, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                          # (B, c_out, H, W)
        gamma, beta = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # (B, c_out, 1, 1) each
        h = self.conv2(F.silu(self.norm2(h) * (1 + gamma) + beta))
        return h + self.skip(x)


class ConditionalUNet(nn.Module):
    """v_θ(x_t, t, caption): a two-level U-Net with skip connections.

    The image is first cut into p × p patches stacked as channels (``pixel_unshuffle``: (C, H, W) →
    (C p², H/p, W/p)), the U-Net runs at H/p → H/2p → H/4p and back, and ``pixel_shuffle`` restores
    (C, H, W): p = 2 makes a 32 × 32 model cost what a 16 × 16 one costs.
    e = SiLU(MLP(time_embedding(t)) + CaptionEncoder(caption)) feeds every :class:`ResBlock`.
    Input x (B, C, H, W) with H, W divisible by 4p; t (B,); ids (B, max_words). Output (B, C, H, W).
    """

    def __init__(self, channels: int = 3, base: int = 32, emb_dim: int = 128, max_words: int = 10,
                 patch: int = 2) -> None:
        super().__init__()
        c1, c2 = base, 2 * base
        self.emb_dim, self.patch = emb_dim, require_int(patch, "patch")
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.caption = CaptionEncoder(emb_dim, max_words=max_words)
        self.inp = nn.Conv2d(channels * patch**2, c1, 3, padding=1)
        self.down1, self.pool1 = ResBlock(c1, c1, emb_dim), nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2, self.pool2 = ResBlock(c1, c2, emb_dim), nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.mid = ResBlock(c2, c2, emb_dim)
        self.up2 = ResBlock(2 * c2, c2, emb_dim)
        self.up1 = ResBlock(c2 + c1, c1, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(min(8, c1), c1), nn.SiLU(),
                                 nn.Conv2d(c1, channels * patch**2, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        x = require_floating(require_rank(x, "x", 4, "(B, C, H, W)"), "x")
        if x.shape[-1] % (4 * self.patch) or x.shape[-2] % (4 * self.patch):
            raise ValueError(f"x must have H and W divisible by 4 * patch = {4 * self.patch}, "
                             f"got shape {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be ({x.shape[0]},), got shape {tuple(t.shape)}")
        e = F.silu(self.time_mlp(time_embedding(t, self.emb_dim)) + self.caption(ids, drop))  # (B, E)
        x = F.pixel_unshuffle(x, self.patch)                           # (B, C p², H', W'), H' = H/p
        h1 = self.down1(self.inp(x), e)                                # (B, c1, H', W')
        h2 = self.down2(self.pool1(h1), e)                             # (B, c2, H'/2, W'/2)
        h = self.mid(self.pool2(h2), e)                                # (B, c2, H'/4, W'/4)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0), h2], 1), e)  # (B, c2, H'/2, W'/2)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0), h1], 1), e)  # (B, c1, H', W')
        return F.pixel_shuffle(self.out(h), self.patch)                # (B, C, H, W)


# ---- training and sampling ------------------------------------------------------------------------------


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, ids: torch.Tensor, *, p_uncond: float = 0.1,
                       t_dist: str = "uniform", generator: torch.Generator | None = None) -> torch.Tensor:
    """L = E_{t, ε, drop ~ Bernoulli(p)} || v_θ(x_t, t, drop ? ∅ : c) - (ε - x_0) ||² (mean).

    t ~ U(0, 1) (``"uniform"``) or t = σ(n), n ~ N(0, 1) (``"logit_normal"``, more weight mid-path).
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond!r}")
    if t_dist not in ("uniform", "logit_normal"):
        raise ValueError(f"t_dist must be 'uniform' or 'logit_normal', got {t_dist!r}")
    B, dev = x0.shape[0], x0.device
    u = torch.rand(B, generator=generator) if t_dist == "uniform" else torch.randn(B, generator=generator).sigmoid()
    t = u.to(dev)                                                      # (B,)
    eps = torch.randn(x0.shape, generator=generator).to(dev)           # (B, C, H, W)
    drop = (torch.rand(B, generator=generator) < p_uncond).to(dev)     # (B,)
    v = model(flow_path(x0, eps, t), t, ids, drop)
    return F.mse_loss(v, flow_target(x0, eps))


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or with a number drawn from the global generator."""
    seed = int(torch.randint(0, 2**62, (1,))) if seed is None else require_int(seed, "seed", 0)
    return torch.Generator().manual_seed(seed)


def train_flow(model: nn.Module, images: torch.Tensor, captions: Sequence[str], *, steps: int = 1000,
               batch_size: int = 32, lr: float = 3e-3, p_uncond: float = 0.1, t_dist: str = "uniform",
               ema: float = 0.0, seed: int | None = None, progress: bool = True) -> list[float]:
    """Train ``model`` on images (N, 3, H, W) in [0, 1] (scaled to x_0 = 2 · image - 1) with AdamW and a
    cosine learning-rate decay; returns the loss of every step. With ``ema`` > 0 the model ends with the
    exponential moving average of its weights, θ̄ ← ema · θ̄ + (1 - ema) · θ after every step.
    ``seed`` seeds the batches, times and noise; None draws it from torch's global generator."""
    from tqdm.auto import tqdm

    images = require_rank(images, "images", 4, "(N, 3, H, W)")
    if len(captions) != images.shape[0]:
        raise ValueError(f"captions must have one caption per image ({images.shape[0]}), got {len(captions)}")
    dev = next(model.parameters()).device
    x_all, ids_all = 2 * images.to(dev) - 1, encode_captions(captions, model.caption.max_words).to(dev)
    gen = _generator(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    avg = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in tqdm(range(steps), desc="flow matching", disable=not progress):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen).to(dev)
        loss = flow_matching_loss(model, x_all[idx], ids_all[idx], p_uncond=p_uncond, t_dist=t_dist,
                                  generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(avg, [p.detach() for p in model.parameters()], 1.0 - ema)
        losses.append(loss.item())
    with torch.no_grad():
        for p, a in zip(model.parameters(), avg):
            p.copy_(a)
    return losses


@torch.no_grad()
def sample_flow(model: nn.Module, captions: Sequence[str], *, steps: int = 20, guidance: float = 2.0,
                image_size: int = 32, seed: int | None = None) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] for ``captions``: Euler from ε ~ N(0, I) at t = 1 to t = 0 with the
    guided velocity v_∅ + w (v_c - v_∅) (one batched forward pass of 2N rows per step). ``seed`` seeds
    the noise (None: drawn from torch's global generator)."""
    dev = next(model.parameters()).device
    ids = encode_captions(captions, model.caption.max_words).to(dev)      # (N, L)
    N = ids.shape[0]
    gen = _generator(seed)
    x1 = torch.randn(N, 3, image_size, image_size, generator=gen).to(dev)
    ids2 = torch.cat([ids, ids])                                         # (2N, L)
    drop = torch.cat([torch.zeros(N, dtype=torch.bool), torch.ones(N, dtype=torch.bool)]).to(dev)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = model(torch.cat([x, x]), torch.cat([t, t]), ids2, drop)     # (2N, 3, H, W)
        return cfg_velocity(v[:N], v[N:], guidance)

    was_training = model.training
    model.eval()
    x0 = euler_sample(velocity, x1, steps)
    model.train(was_training)
    return ((x0 + 1) / 2).clamp(0, 1)
