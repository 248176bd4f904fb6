"""A tiny causal language model (chapter 6), reused as the frozen language model of chapter 7's LLaVA.

nanoGPT-style (Radford et al. 2019; Karpathy's nanoGPT): token + position embeddings, ``depth``
chapter-6 :class:`~mmlearn.attention.TransformerBlock`\\ s (causal), a final LayerNorm and an output
head tied to the token embedding:

    h_0 = E[w_t] + P[t],   h_l = Block_l(h_{l-1}),   p(w_{t+1} | w_≤t) = softmax(LN(h_L) E^T)

:class:`CausalLM` runs the blocks' own parameters through one attention routine that also serves
generation with a **KV cache** (keys and values of past positions are kept, so each new token costs
one row of attention instead of a full recomputation), rotary positions (``positions="rope"``) and a
Post-LN variant (``norm="post"``, the original Transformer's order) for comparison.
With ``norm="pre"`` and ``positions`` learned or sinusoidal, each block computes exactly what
``TransformerBlock.forward`` computes (tested).

:func:`train_lm` trains it on a 1-D tensor of token ids (random windows, AdamW, warm-up + cosine);
:func:`evaluate_lm` gives the mean cross-entropy (nats per token) over fixed windows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmlearn._validate import require_in, require_int, require_positive, require_rank, require_tensor
from mmlearn.attention import TransformerBlock, apply_rope, sinusoidal_positions
from mmlearn.optim import warmup_cosine_scheduler

__all__ = ["LMConfig", "KVCache", "CausalLM", "train_lm", "evaluate_lm", "sample_windows"]

POSITIONS = ("learned", "sinusoidal", "rope", "none")
NORMS = ("pre", "post")


@dataclass
class LMConfig:
    """Hyper-parameters of :class:`CausalLM`. ``block_size`` is the longest context (positions 0..block_size-1)."""

    vocab_size: int
    block_size: int = 128
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    positions: str = "learned"   # "learned" | "sinusoidal" | "rope" | "none"
    norm: str = "pre"            # "pre" (GPT-2) | "post" (Vaswani et al. 2017)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "dim", "depth", "num_heads"):
            require_int(getattr(self, name), name)
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim must be divisible by num_heads with an even head size, got dim={self.dim}, "
                             f"num_heads={self.num_heads}")
        require_positive(self.mlp_ratio, "mlp_ratio")
        require_in(self.positions, "positions", POSITIONS)
        require_in(self.norm, "norm", NORMS)


class KVCache:
    """Keys and values of the positions seen so far, one ``(B, nh, S, hs)`` pair per layer."""

    def __init__(self, depth: int) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth

    def __len__(self) -> int:
        """S, the number of cached positions."""
        return 0 if self.layers[0] is None else self.layers[0][0].shape[2]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new keys/values ``(B, nh, T, hs)`` of ``layer``; return all of them ``(B, nh, S+T, hs)``."""
        past = self.layers[layer]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        self.layers[layer] = (k, v)
        return k, v


class CausalLM(nn.Module):
    """Decoder-only Transformer language model built from chapter 6's ``TransformerBlock``.

    ``forward(idx (B, T) | None, prefix=None (B, P, dim), cache=None) -> logits (B, P+T, V)``. A ``prefix``
    of embeddings (chapter 7: projected image tokens) is read before the tokens; positions run over the
    whole sequence. With a :class:`KVCache` the positions continue after the cached ones and the cache grows.
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tok = nn.Embedding(c.vocab_size, c.dim)
        self.pos = nn.Embedding(c.block_size, c.dim) if c.positions == "learned" else None
        if c.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(c.block_size, c.dim), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(c.dim, c.num_heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout,
                                                     causal=True) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim) if c.norm == "pre" else nn.Identity()   # Post-LN ends normalised
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.head.weight = self.tok.weight                                        # tied: logits = h E^T
        nn.init.normal_(self.tok.weight, std=0.02)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def _positions(self, start: int, T: int, device: torch.device) -> torch.Tensor | float:
        if start + T > self.config.block_size:
            raise ValueError(f"sequence too long: positions {start}..{start + T - 1} exceed block_size = "
                             f"{self.config.block_size}")
        if self.pos is not None:
            return self.pos(torch.arange(start, start + T, device=device))        # (T, dim)
        if self.config.positions == "sinusoidal":
            return self.pos_table[start:start + T]                                # (T, dim)
        return 0.0                                                                # none, or RoPE (inside attention)

    def _attention(self, block: TransformerBlock, h: torch.Tensor, start: int, layer: int,
                   cache: KVCache | None) -> torch.Tensor:
        """Causal multi-head self-attention of ``block`` on h (B, T, dim), positions start..start+T-1."""
        attn = block.attn
        B, T, dim = h.shape
        qkv = h @ attn.in_proj_weight.T + attn.in_proj_bias                       # (B, T, 3 dim) = [q | k | v]
        q, k, v = qkv.view(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)   # (B, nh, T, hs) each
        if self.config.positions == "rope":                                       # (B, nh, T, hs) each
            where = torch.arange(start, start + T, device=h.device)
            q, k = apply_rope(q, where), apply_rope(k, where)
        if cache is not None:
            k, v = cache.extend(layer, k, v)                                      # (B, nh, S, hs), S = start + T
        S = k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool, device=h.device).tril(S - T)    # query i sees keys <= S-T+i
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)             # = mmlearn's, tested in ch. 6
        return attn.out_proj(out.transpose(1, 2).reshape(h.shape))                # (B, T, dim)

    def _block(self, block: TransformerBlock, x: torch.Tensor, start: int, layer: int,
               cache: KVCache | None) -> torch.Tensor:
        if self.config.norm == "pre":                                             # x + f(LN(x))
            x = x + block.drop(self._attention(block, block.norm1(x), start, layer, cache))
            return x + block.ffn(block.norm2(x))
        x = block.norm1(x + block.drop(self._attention(block, x, start, layer, cache)))   # LN(x + f(x))
        return block.norm2(x + block.ffn(x))

    def hidden(self, idx: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states (B, P+T, dim) (after the last LayerNorm)."""
        x = self._inputs(idx, prefix)                                             # (B, P+T, dim)
        start = 0 if cache is None else len(cache)
        x = self.drop(x + self._positions(start, x.shape[1], x.device))
        for layer, block in enumerate(self.blocks):
            x = self._block(block, x, start, layer, cache)
        return self.norm(x)

    def _inputs(self, idx: torch.Tensor | None, prefix: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if prefix is not None:
            prefix = require_rank(prefix, "prefix", 3, "(B, P, dim)")
            if prefix.shape[-1] != self.config.dim:
                raise ValueError(f"prefix must be (B, P, {self.config.dim}), got shape {tuple(prefix.shape)}")
            parts.append(prefix)
        if idx is not None:
            idx = require_rank(idx, "idx", 2, "(B, T)")
            if idx.dtype != torch.long or (idx.numel() and (idx.min() < 0 or idx.max() >= self.config.vocab_size)):
                raise ValueError(f"idx must hold int64 ids in [0, {self.config.vocab_size}), got {idx.dtype} "
                                 f"with range [{idx.min().item() if idx.numel() else '-'}, "
                                 f"{idx.max().item() if idx.numel() else '-'}]")
            parts.append(self.tok(idx))
        if not parts or sum(p.shape[1] for p in parts) == 0:
            raise ValueError("need idx (B, T) or prefix (B, P, dim) with at least one position, got none")
        if len(parts) == 2 and parts[0].shape[0] != parts[1].shape[0]:
            raise ValueError(f"prefix and idx must share B, got {parts[0].shape[0]} and {parts[1].shape[0]}")
        return torch.cat(parts, dim=1)

    def forward(self, idx: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, P+T, V): position t predicts the token at t+1."""
        return self.head(self.hidden(idx, prefix, cache))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats per token) -1/N sum_t log p(targets_t | idx_≤t); targets -100 are ignored."""
        logits = self(idx)                                                        # (B, T, V)
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after idx (B, T); return (B, T + max_new_tokens).

        ``temperature=0`` is greedy. Without the cache every step recomputes the last ``block_size`` tokens
        (nanoGPT); with it, each step feeds one token. Once the context is full the cache is rebuilt from the
        last ``block_size`` tokens, so both paths always compute the same logits.
        """
        idx = require_rank(require_tensor(idx, "idx"), "idx", 2, "(B, T)")
        require_int(max_new_tokens, "max_new_tokens", 0)
        require_positive(temperature, "temperature", allow_zero=True)
        if top_k is not None:
            require_int(top_k, "top_k", 1, self.config.vocab_size)
        was_training, cache, fresh = self.training, None, idx
        self.eval()
        B = self.config.block_size
        for _ in range(max_new_tokens):
            if not use_cache or cache is None or len(cache) >= B:
                cache = KVCache(self.config.depth) if use_cache else None
                fresh = idx[:, -B:]                                               # recompute the (cropped) context
            logits = self(fresh, cache=cache)[:, -1]                              # (B, V)
            nxt = self._pick(logits, temperature, top_k, generator)               # (B, 1)
            idx, fresh = torch.cat([idx, nxt], dim=1), nxt
        self.train(was_training)
        return idx

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_k: int | None,
              generator: torch.Generator | None) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]                       # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)  # (B, 1)

    def num_parameters(self) -> int:
        """All parameters, frozen ones included (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        return asdict(self.config)


def sample_windows(data: torch.Tensor, block_size: int, batch_size: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a 1-D id tensor: x = data[i:i+T], y = data[i+1:i+T+1] (next-token targets), (B, T) each."""
    data = require_rank(require_tensor(data, "data"), "data", 1, "(N,)")
    if len(data) <= block_size:
        raise ValueError(f"data must be longer than block_size = {block_size}, got {len(data)} ids")
    start = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)   # (B,)
    rows = start[:, None] + torch.arange(block_size + 1)                                  # (B, T+1)
    chunk = data[rows.to(data.device)]
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate_lm(model: CausalLM, data: torch.Tensor, block_size: int | None = None, batch_size: int = 32,
                max_batches: int | None = None) -> float:
    """Mean next-token cross-entropy in nats over consecutive, non-overlapping windows of ``data`` (deterministic)."""
    data = require_rank(require_tensor(data, "data"), "data", 1, "(N,)")
    T = block_size or model.config.block_size
    n = (len(data) - 1) // T
    if n < 1:
        raise ValueError(f"data must hold more than block_size = {T} ids, got {len(data)}")
    x, y = data[: n * T].view(n, T), data[1: n * T + 1].view(n, T)                        # (n, T) each
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    for b, i in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        logits = model(x[i:i + batch_size])
        total += F.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten(), reduction="sum").item()
        count += y[i:i + batch_size].numel()
    model.train(was_training)
    return total / count


def train_lm(model: CausalLM, data: torch.Tensor, *, steps: int, batch_size: int = 32, block_size: int | None = None,
             lr: float = 3e-3, warmup_steps: int | None = None, weight_decay: float = 0.1, grad_clip: float = 1.0,
             val_data: torch.Tensor | None = None, eval_every: int | None = None, seed: int = 0,
             progress: bool = True, desc: str = "training the LM") -> dict[str, list[float]]:
    """Next-token training on random windows of ``data`` (1-D ids): AdamW, linear warm-up then cosine decay,
    gradient clipping. Returns ``{"step", "train_loss", "val_step", "val_loss"}`` (nats per token)."""
    from tqdm.auto import tqdm

    require_int(steps, "steps")
    T = block_size or model.config.block_size
    warmup = max(1, steps // 10) if warmup_steps is None else warmup_steps
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    sched = warmup_cosine_scheduler(opt, warmup_steps=warmup, total_steps=steps, min_factor=0.1)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"step": [], "train_loss": [], "val_step": [], "val_loss": []}
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        x, y = sample_windows(data, T, batch_size, gen)
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        hist["step"].append(step + 1)
        hist["train_loss"].append(loss.item())
        if val_data is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            hist["val_step"].append(step + 1)
            hist["val_loss"].append(evaluate_lm(model, val_data, T, max_batches=4))
            bar.set_postfix(val=f"{hist['val_loss'][-1]:.3f}")
    return hist


def bits(nats: float) -> float:
    """nats -> bits: divide by ln 2."""
    return nats / math.log(2)
