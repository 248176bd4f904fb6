"""Multimodal Transformers (chapter 7): ViT, CLIP, an image captioner, gated cross-attention, a tiny VLM.

Everything here is assembled from the chapter-6 pieces (:mod:`mmlearn.attention`) and the chapter-3
patch embedding (:mod:`mmlearn.features`); no attention is re-implemented.

- :class:`VisionTransformer` — patches -> tokens (+ a [CLS] token and learned positions) -> encoder.
- :class:`TextTransformer` — word ids -> tokens -> encoder -> one vector (mean over real tokens, or the last).
- :class:`CLIP` — two encoders, two projections, L2-normalised embeddings, a learnable temperature;
  :func:`zero_shot_classify` turns it into a classifier from class *prompts*.
- :class:`GridEncoder` — a small CNN whose last feature map is read as a grid of image tokens.
- :class:`Captioner` — an image encoder and a causal text decoder that cross-attends to the image
  tokens; teacher forcing for training, greedy and beam search for generation.
- :class:`GatedCrossAttention` — Flamingo's layer: cross-attention and FFN behind ``tanh`` gates that
  start at 0, so a pretrained language model is unchanged at initialisation.
- :class:`TinyVLM` — LLaVA-style: a frozen vision encoder, a projector, and a small causal language
  model that reads [image tokens; question] and writes the answer.

Token conventions follow :mod:`mmlearn.preprocess.text`: ``<pad> = 0, <bos> = 2, <eos> = 3``; masks are
boolean with True = real token; attention masks are True = may attend.

Attention weights: every model here runs its attention on the fused fast path
(``F.scaled_dot_product_attention``, nanoGPT's choice), which keeps no weights — same outputs and
gradients, faster. To read the maps, run the forward inside ``with mmlearn.attention.keep_weights(model):``;
the blocks then keep ``attn_weights`` / ``cross_weights`` (``GatedCrossAttention``: ``weights``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmlearn._validate import require_floating, require_in, require_int, require_rank, require_tensor
from mmlearn.attention import FeedForward, MultiHeadAttention, TransformerDecoder, TransformerEncoder, keep_weights
from mmlearn.features import PatchEmbedding
from mmlearn.losses import clip_loss, siglip_loss

__all__ = [
    "VisionTransformer", "TextTransformer", "CLIP", "zero_shot_classify", "GridEncoder", "Captioner",
    "GatedCrossAttention", "TinyVLM", "PAD_ID", "BOS_ID", "EOS_ID",
    "SigLIP", "PerceiverResampler", "QFormer",
]

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3


# ---- input checks -------------------------------------------------------------------------------


def _require_images(images: object, channels: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    images = require_floating(require_rank(images, "images", 4, "(B, C, H, W)"), "images")
    if images.shape[1] != channels or (size is not None and tuple(images.shape[2:]) != size):
        want = f"(B, {channels}, {size[0]}, {size[1]})" if size is not None else f"(B, {channels}, H, W)"
        raise ValueError(f"images must be {want}, got shape {tuple(images.shape)}")
    return images


def _require_ids(ids: object, vocab_size: int, max_len: int | None = None) -> torch.Tensor:
    ids = require_rank(ids, "ids", 2, "(B, L) token ids")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids must be an integer tensor, got dtype {ids.dtype}")
    if ids.shape[1] == 0 or (max_len is not None and ids.shape[1] > max_len):
        raise ValueError(f"ids must be (B, L) with 1 <= L <= {max_len}, got shape {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got range [{int(ids.min())}, {int(ids.max())}]")
    return ids


def _require_mask(mask: torch.Tensor | None, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The padding mask (B, L), True = real token; ``None`` means ``ids != pad_id``."""
    if mask is None:
        return ids != pad_id
    mask = require_tensor(mask, "mask")
    if mask.dtype != torch.bool or mask.shape != ids.shape:
        raise ValueError(f"mask must be a bool tensor of the shape of ids {tuple(ids.shape)} (True = real token), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    return mask


def _out_dim(module: nn.Module, given: int | None, name: str) -> int:
    """The feature size of an encoder: ``given``, else its ``out_dim`` attribute."""
    dim = given if given is not None else getattr(module, "out_dim", None)
    if dim is None:
        raise ValueError(f"{name} has no out_dim attribute: pass {name.split('_')[0]}_dim explicitly")
    return require_int(dim, f"{name}.out_dim")


# ---- ViT ----------------------------------------------------------------------------------------

class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al., 2021):  z_0 = [x_cls; x_p^1 E; ...; x_p^N E] + E_pos,  z_L = Encoder(z_0).

    ``forward(images (B, C, H, W))`` returns the pooled vector ``(B, dim)`` — the [CLS] token
    (``pool="cls"``) or the mean of the patch tokens (``pool="mean"``) — or the class logits
    ``(B, num_classes)`` when ``num_classes`` is given. :meth:`tokens` returns every token
    ``(B, 1 + N, dim)`` ([CLS] first), the sequence a captioner cross-attends to.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3, dim: int = 64,
                 depth: int = 2, num_heads: int = 4, *, mlp_ratio: float = 2.0, num_classes: int | None = None,
                 pool: str = "cls", dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = require_in(pool, "pool", ("cls", "mean"))
        self.patch = PatchEmbedding(image_size, patch_size, in_channels, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 1 + self.patch.num_patches, dim))
        self.encoder = TransformerEncoder(dim, depth, num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                                          need_weights=False)   # fast path; keep_weights(model) to read maps
        self.head = nn.Linear(dim, require_int(num_classes, "num_classes", 2)) if num_classes is not None else None
        self.in_channels, self.image_size, self.out_dim = in_channels, self.patch.image_size, dim
        self.num_patches = self.patch.num_patches

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        images = _require_images(images, self.in_channels, self.image_size)
        x = self.patch(images)                                            # (B, N, dim)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)         # (B, 1 + N, dim)
        return self.encoder(x + self.pos)                                 # (B, 1 + N, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.tokens(images)
        h = z[:, 0] if self.pool == "cls" else z[:, 1:].mean(dim=1)       # (B, dim)
        return self.head(h) if self.head is not None else h


# ---- text encoder -------------------------------------------------------------------------------

class TextTransformer(nn.Module):
    """Word ids -> one vector:  h = Pool(Encoder(E[ids] + E_pos)),  padding masked out of attention.

    ``pool="mean"`` averages the real tokens; ``pool="last"`` takes the last real token (CLIP's
    choice, with ``causal=True`` so that this token has read the whole caption). ``depth=0`` is a
    *bag of words*: the mean of the word embeddings, order ignored.
    ``forward(ids (B, L), mask=None (B, L) bool, True = real token) -> (B, dim)``.
    """

    def __init__(self, vocab_size: int, dim: int = 64, depth: int = 1, num_heads: int = 4, max_len: int = 32, *,
                 pad_id: int = PAD_ID, causal: bool = False, pool: str = "mean", mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.vocab_size, self.max_len = require_int(vocab_size, "vocab_size", 2), require_int(max_len, "max_len")
        self.pool = require_in(pool, "pool", ("mean", "last"))
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id must be in [0, {vocab_size}), got {pad_id!r}")
        depth = require_int(depth, "depth", 0)
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(max_len, dim)) if depth > 0 else None
        self.encoder = (TransformerEncoder(dim, depth, num_heads, mlp_ratio=mlp_ratio, causal=causal,
                                           need_weights=False) if depth else None)   # fast path
        self.pad_id, self.out_dim = pad_id, dim

    def tokens(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        ids = _require_ids(ids, self.vocab_size, self.max_len)
        mask = _require_mask(mask, ids, self.pad_id)
        x = self.embed(ids)                                               # (B, L, dim)
        if self.encoder is not None:
            x = self.encoder(x + self.pos[: ids.shape[1]], mask[:, None, :])  # keys: real tokens only
        return x

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokens(ids, mask)
        mask = _require_mask(mask, ids, self.pad_id)
        if not mask.any(dim=1).all():
            raise ValueError("every text must have at least one real token: a row of mask is all False")
        if self.pool == "last":
            last = mask.long().cumsum(dim=1).argmax(dim=1)                # index of the last real token
            return x[torch.arange(len(x), device=x.device), last]        # (B, dim)
        m = mask.unsqueeze(-1).to(x.dtype)                                # (B, L, 1)
        return (x * m).sum(dim=1) / m.sum(dim=1)                          # (B, dim)


# ---- CLIP ---------------------------------------------------------------------------------------

class CLIP(nn.Module):
    """Contrastive image–text model (Radford et al., 2021).

        I = normalize(W_i f(image)),  T = normalize(W_t g(text)),  logits = e^s I T^T,  e^s <= max_scale

    ``s = logit_scale`` is learned in log space, initialised at log(1/0.07). As in CLIP and open_clip,
    the *stored log* is clamped at log(``max_scale``) = log 100 — the same as capping the multiplier at
    100 — **in place, after each optimiser step**: call :meth:`clamp_logit_scale_` after
    ``optimizer.step()``. (Clamping inside ``forward`` instead would zero the gradient of ``s`` as soon
    as it passes the cap, and it could never come back.) ``forward(images, ids, mask)``
    returns ``logits_per_image`` (N, N) (row = image, column = text; ``.T`` is ``logits_per_text``);
    :meth:`loss` is the symmetric InfoNCE of :func:`mmlearn.losses.clip_loss`.
    The encoders are any modules mapping images -> (B, d_i) and (ids, mask) -> (B, d_t).
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int = 32, *,
                 image_dim: int | None = None, text_dim: int | None = None, init_temperature: float = 0.07,
                 max_scale: float = 100.0) -> None:
        super().__init__()
        if not (isinstance(init_temperature, (int, float)) and init_temperature > 0
                and isinstance(max_scale, (int, float)) and 1 <= 1 / init_temperature <= max_scale):
            raise ValueError(f"need 1 <= 1/init_temperature <= max_scale, "
                             f"got {init_temperature!r}, {max_scale!r}")
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_proj = nn.Linear(_out_dim(image_encoder, image_dim, "image_encoder"),
                                    require_int(embed_dim, "embed_dim"), bias=False)
        self.text_proj = nn.Linear(_out_dim(text_encoder, text_dim, "text_encoder"), embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log_scale, self.embed_dim = math.log(max_scale), embed_dim

    @torch.no_grad()
    def clamp_logit_scale_(self) -> CLIP:
        """Clamp the parameter s to [0, log(max_scale)] in place (call it after each optimiser step)."""
        self.logit_scale.clamp_(0.0, self.max_log_scale)
        return self

    def clamped_logit_scale(self) -> torch.Tensor:
        """s clamped at log(max_scale), for display; training uses ``logit_scale`` and :meth:`clamp_logit_scale_`."""
        return self.logit_scale.clamp(max=self.max_log_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)       # (N, E), unit rows

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text_encoder(ids, mask)), dim=-1)      # (M, E), unit rows

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        image_emb, text_emb = self.encode_image(images), self.encode_text(ids, mask)
        return self.logit_scale.exp() * image_emb @ text_emb.T                         # (N, M)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Symmetric InfoNCE over the batch: pair i (image i, text i) is the positive of row and column i."""
        image_emb, text_emb = self.encode_image(images), self.encode_text(ids, mask)
        if len(image_emb) != len(text_emb):
            raise ValueError(f"need one text per image, got {len(image_emb)} images and {len(text_emb)} texts")
        return clip_loss(image_emb, text_emb, self.logit_scale)


class SigLIP(CLIP):
    """CLIP trained with SigLIP's pairwise sigmoid loss (Zhai et al., 2023), :func:`mmlearn.losses.siglip_loss`:

        logits = e^s I T^T + b,    p(image i matches text j) = σ(logits_ij)

    The encoders, projections and the in-place clamp of ``s`` are :class:`CLIP`'s (``CLIP`` itself is
    unchanged); a learnable bias ``b`` is added. SigLIP starts at e^s = 10 (``init_temperature=0.1``) and
    b = -10: each positive comes with N - 1 negatives, so a start that says "no match" to every pair
    (σ(-10) ≈ 4.5e-5) costs almost nothing on the N² - N negatives and the first steps need not push
    them all down. ``forward`` returns the logits with the bias, (N, M).
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int = 32, *,
                 image_dim: int | None = None, text_dim: int | None = None, init_temperature: float = 0.1,
                 init_bias: float = -10.0, max_scale: float = 100.0) -> None:
        super().__init__(image_encoder, text_encoder, embed_dim, image_dim=image_dim, text_dim=text_dim,
                         init_temperature=init_temperature, max_scale=max_scale)
        if not isinstance(init_bias, (int, float)) or not math.isfinite(init_bias):
            raise ValueError(f"init_bias must be a finite number, got {init_bias!r}")
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(images, ids, mask) + self.logit_bias                      # (N, M)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sigmoid loss over all N² pairs of the batch: pair (i, i) is positive, every (i, j ≠ i) negative."""
        image_emb, text_emb = self.encode_image(images), self.encode_text(ids, mask)
        if len(image_emb) != len(text_emb):
            raise ValueError(f"need one text per image, got {len(image_emb)} images and {len(text_emb)} texts")
        return siglip_loss(image_emb, text_emb, self.logit_scale, self.logit_bias)


@torch.no_grad()
def zero_shot_classify(model: CLIP, images: torch.Tensor, prompt_ids: torch.Tensor,
                       prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Classify with text prompts: class(x) = argmax_c  I(x) · T(prompt_c).

    ``prompt_ids`` ``(C, L)`` holds one prompt per class (e.g. "a large red circle"); returns the
    predicted class indices ``(N,)``. No classifier was trained: the classes are whatever the prompts say.
    """
    if not isinstance(model, CLIP):
        raise ValueError(f"model must be an mmlearn.models.CLIP, got {type(model).__name__}")
    prompt_ids = require_rank(prompt_ids, "prompt_ids", 2, "(C, L) one prompt per class")
    was_training = model.training
    model.eval()
    sim = model.encode_image(images) @ model.encode_text(prompt_ids, prompt_mask).T    # (N, C)
    model.train(was_training)
    return sim.argmax(dim=-1)


# ---- captioning ---------------------------------------------------------------------------------

class Captioner(nn.Module):
    """Encoder–decoder captioner (Show-and-Tell made Transformer, with Show-Attend-and-Tell's attention):

        M = W_m f(image)                       image tokens (B, S, dim): the memory
        h = Decoder(E[w_<t] + E_pos, M)        causal self-attention + cross-attention to M
        p(w_t | w_<t, image) = softmax(W_o h_t)

    ``image_encoder`` maps images to a token sequence ``(B, S, image_dim)`` (a ViT's :meth:`tokens`,
    a CNN feature grid). Training is teacher forcing (:meth:`loss`); :meth:`generate` decodes greedily
    (``beam_size=1``) or with beam search. Ids follow :mod:`mmlearn.preprocess.text`: <bos> = 2, <eos> = 3.
    """

    def __init__(self, vocab_size: int, image_encoder: nn.Module, *, image_dim: int | None = None, dim: int = 64,
                 depth: int = 2, num_heads: int = 4, max_len: int = 16, mlp_ratio: float = 2.0,
                 pad_id: int = PAD_ID, bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> None:
        super().__init__()
        self.vocab_size, self.max_len = require_int(vocab_size, "vocab_size", 4), require_int(max_len, "max_len", 2)
        self.image_encoder = image_encoder
        self.image_proj = nn.Linear(_out_dim(image_encoder, image_dim, "image_encoder"), dim)
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(max_len, dim))
        self.decoder = TransformerDecoder(dim, depth, num_heads, mlp_ratio=mlp_ratio, need_weights=False)
        self.head = nn.Linear(dim, vocab_size)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The memory the decoder reads: image tokens projected to the decoder width, (B, S, dim)."""
        feats = self.image_encoder(images)
        if feats.ndim != 3:
            raise ValueError(f"image_encoder must return a token sequence (B, S, d), got shape {tuple(feats.shape)}")
        return self.image_proj(feats)                                       # (B, S, dim)

    def decode(self, memory: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for every prefix of ``ids``; right padding is harmless (causal)."""
        ids = _require_ids(ids, self.vocab_size, self.max_len)
        x = self.embed(ids) + self.pos[: ids.shape[1]]                      # (B, T, dim)
        return self.head(self.decoder(x, memory))                           # (B, T, V)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images), ids)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing:  -(1/#targets) Σ_t log p(w_{t+1} | w_≤t, image)  over the real target tokens.

        ``ids`` (B, T) = [<bos>, w_1, ..., w_n, <eos>, <pad>...]; ``mask`` True = real token.
        """
        mask = _require_mask(mask, _require_ids(ids, self.vocab_size, self.max_len + 1), self.pad_id)
        logits = self(images, ids[:, :-1])                                   # (B, T-1, V): predicts ids[:, 1:]
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)                 # padding is not a target
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Cross-attention weights of every decoder layer, averaged over heads: (depth, B, T, S).

        Row t is where the decoder looked in the image while predicting token t + 1. The decoder runs on
        the book's attention path for this call only (:func:`mmlearn.attention.keep_weights`).
        """
        with keep_weights(self.decoder):
            self.decode(self.encode(images), ids)
        return torch.stack([block.cross_weights for block in self.decoder.blocks])

    def _strip(self, seqs: torch.Tensor) -> list[list[int]]:
        """Drop <bos>, cut at the first <eos> (what follows it is padding)."""
        rows = seqs[:, 1:].tolist()
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in rows]

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int, beam_size: int = 1) -> list[list[int]]:
        """Caption ids for each image (without <bos>/<eos>), at most ``max_len`` tokens.

        ``beam_size=1``: greedy, w_t = argmax p(w | w_<t, image). ``beam_size=k``: keep the k prefixes of
        highest log-probability Σ_t log p(w_t | w_<t, image); a finished hypothesis keeps its score.
        <pad> and <bos> are never generated.
        """
        require_int(max_len, "max_len")
        if max_len + 1 > self.max_len:
            raise ValueError(f"max_len must be <= {self.max_len - 1} (positions incl. <bos>), got {max_len}")
        require_int(beam_size, "beam_size")
        was_training = self.training
        self.eval()
        memory = self.encode(images)                                          # (B, S, dim)
        seqs = self._greedy(memory, max_len) if beam_size == 1 else self._beam(memory, max_len, beam_size)
        self.train(was_training)
        return self._strip(seqs)

    def _next_log_probs(self, memory: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """log p(next word | prefix, image) (B, V); <pad> and <bos> are never generated (log p = -inf)."""
        logp = F.log_softmax(self.decode(memory, seqs)[:, -1], dim=-1)       # (B, V)
        logp[:, [self.pad_id, self.bos_id]] = float("-inf")
        return logp

    def _greedy(self, memory: torch.Tensor, max_len: int) -> torch.Tensor:
        seqs = memory.new_full((len(memory), 1), self.bos_id, dtype=torch.long)
        done = torch.zeros(len(memory), dtype=torch.bool, device=memory.device)
        for _ in range(max_len):
            nxt = self._next_log_probs(memory, seqs).argmax(dim=-1)           # (B,)
            nxt = nxt.masked_fill(done, self.pad_id)
            seqs, done = torch.cat([seqs, nxt[:, None]], dim=1), done | (nxt == self.eos_id)
            if done.all():
                break
        return seqs

    def _beam(self, memory: torch.Tensor, max_len: int, k: int) -> torch.Tensor:
        B, V = len(memory), self.vocab_size
        memory = memory.repeat_interleave(k, dim=0)                           # (B k, S, dim)
        seqs = memory.new_full((B * k, 1), self.bos_id, dtype=torch.long)
        scores = memory.new_full((B, k), float("-inf"))
        scores[:, 0] = 0.0                                                    # one live beam at the start
        done = torch.zeros(B * k, dtype=torch.bool, device=memory.device)
        for _ in range(max_len):
            logp = self._next_log_probs(memory, seqs)                         # (B k, V)
            logp[done] = float("-inf")
            logp[done, self.pad_id] = 0.0                                     # a finished beam only pads, for free
            cand = (scores.reshape(B * k, 1) + logp).view(B, k * V)           # (B, k V)
            scores, idx = cand.topk(k, dim=1)                                 # (B, k)
            rows = (torch.arange(B, device=idx.device)[:, None] * k + idx // V).flatten()
            tok = (idx % V).flatten()
            seqs, done = torch.cat([seqs[rows], tok[:, None]], dim=1), done[rows] | (tok == self.eos_id)
            if done.all():
                break
        best = scores.argmax(dim=1) + torch.arange(B, device=scores.device) * k
        return seqs[best]


def _masked_next_token_loss(model: nn.Module, images: torch.Tensor, ids: torch.Tensor,
                            target_mask: torch.Tensor) -> torch.Tensor:
    """-mean log p(ids[t] | image, ids[<t]) over the positions t >= 1 where ``target_mask`` is True.

    ``model(images, ids[:, :-1])`` gives the (B, T-1, V) logits of the text positions; shared by the
    vision-language models, whose loss covers the answer tokens only.
    """
    target_mask = require_tensor(target_mask, "target_mask")
    if target_mask.dtype != torch.bool or target_mask.shape != ids.shape or not target_mask[:, 1:].any():
        raise ValueError(f"target_mask must be bool of shape {tuple(ids.shape)} with a True after position 0, "
                         f"got {target_mask.dtype} {tuple(target_mask.shape)}")
    logits = model(images, ids[:, :-1])                                      # (B, T-1, V)
    target = ids[:, 1:].masked_fill(~target_mask[:, 1:], -100)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)


# ---- Flamingo's gated cross-attention -----------------------------------------------------------

class GatedCrossAttention(nn.Module):
    """Flamingo's GATED XATTN-DENSE layer (Alayrac et al., 2022), inserted before a frozen LM block:

        x <- x + tanh(α_attn) · CrossAttn(LN(x), media)
        x <- x + tanh(α_ffn)  · FFN(LN(x))

    α_attn = α_ffn = 0 at initialisation, so the layer is the identity and the language model starts
    exactly as it was pretrained; training opens the gates. ``forward(x (B, T, dim), media (B, S, dim),
    media_mask=None)`` (bool, broadcastable to (B, T, S), True = may attend) -> (B, T, dim).
    ``need_weights`` (attribute, default False: the fused fast path) keeps the head-averaged
    cross-attention weights in ``self.weights`` (B, T, S); or use ``mmlearn.attention.keep_weights``.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm_attn, self.attn = nn.LayerNorm(dim), MultiHeadAttention(dim, num_heads)
        self.norm_ffn, self.ffn = nn.LayerNorm(dim), FeedForward(dim, max(1, round(mlp_ratio * dim)))
        self.alpha_attn = nn.Parameter(torch.zeros(()))
        self.alpha_ffn = nn.Parameter(torch.zeros(()))
        self.weights: torch.Tensor | None = None
        self.need_weights = False

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_mask: torch.Tensor | None = None) -> torch.Tensor:
        a, weights = self.attn(self.norm_attn(x), media, media, media_mask,
                               need_weights=self.need_weights)               # (B, T, dim), (B, T, S) or None
        self.weights = None if weights is None else weights.detach()
        x = x + torch.tanh(self.alpha_attn) * a
        return x + torch.tanh(self.alpha_ffn) * self.ffn(self.norm_ffn(x))


# ---- a tiny LLaVA -------------------------------------------------------------------------------

class TinyVLM(nn.Module):
    """LLaVA-style vision–language model (Liu et al., 2023):

        H_v = P(f(image))                           frozen vision encoder f, trainable projector P
        h   = CausalLM([H_v; E[ids]] + E_pos)       one sequence: image tokens first, then the words
        p(w_{t+1} | image, w_≤t) = softmax(W_o h_t)

    ``vision_encoder`` maps images to tokens ``(B, S, vision_dim)`` and is frozen (``freeze_vision``):
    no gradient, kept in eval mode. ``connector`` is ``"linear"`` (LLaVA), ``"mlp"`` (LLaVA-1.5) or any
    module mapping ``(B, S, vision_dim)`` to ``(B, K, dim)`` (e.g. K learned queries, the Q-Former idea).
    The positions ``E_pos`` run over the whole sequence, image tokens included (so the language model
    knows which image token is which); ``max_len`` bounds S + T. ``forward(images, ids)`` returns the
    logits of the text positions ``(B, T, V)``.
    """

    def __init__(self, vision_encoder: nn.Module, vocab_size: int, *, vision_dim: int | None = None, dim: int = 64,
                 depth: int = 2, num_heads: int = 4, max_len: int = 48, mlp_ratio: float = 2.0,
                 connector: str | nn.Module = "linear", freeze_vision: bool = True, pad_id: int = PAD_ID,
                 bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> None:
        super().__init__()
        self.vocab_size, self.max_len = require_int(vocab_size, "vocab_size", 4), require_int(max_len, "max_len", 2)
        d_v = _out_dim(vision_encoder, vision_dim, "vision_encoder")
        self.vision_encoder, self.freeze_vision = vision_encoder, bool(freeze_vision)
        if self.freeze_vision:
            vision_encoder.requires_grad_(False)
        if isinstance(connector, nn.Module):
            self.projector = connector
        elif require_in(connector, "connector", ("linear", "mlp")) == "linear":
            self.projector = nn.Linear(d_v, dim)
        else:
            self.projector = nn.Sequential(nn.Linear(d_v, dim), nn.GELU(), nn.Linear(dim, dim))
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim))   # the scale of the N(0, 1) word embeddings
        self.lm = TransformerEncoder(dim, depth, num_heads, mlp_ratio=mlp_ratio, causal=True, need_weights=False)
        self.head = nn.Linear(dim, vocab_size)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def train(self, mode: bool = True) -> TinyVLM:
        super().train(mode)
        if self.freeze_vision:
            self.vision_encoder.eval()                                       # frozen: BatchNorm etc. stay fixed
        return self

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """H_v = P(f(images)): (B, S, dim), in the language model's embedding space."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vision):
            feats = self.vision_encoder(images)
        if feats.ndim != 3:
            raise ValueError(f"vision_encoder must return tokens (B, S, d), got shape {tuple(feats.shape)}")
        h_v = self.projector(feats)
        if h_v.ndim != 3 or h_v.shape[-1] != self.embed.embedding_dim:
            raise ValueError(f"the connector must return (B, K, {self.embed.embedding_dim}), got {tuple(h_v.shape)}")
        return h_v

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ids = _require_ids(ids, self.vocab_size, self.max_len)
        h_v = self.image_tokens(images)                                      # (B, S, dim)
        if len(h_v) != len(ids):
            raise ValueError(f"need one text per image, got {len(h_v)} images and {len(ids)} texts")
        S, T = h_v.shape[1], ids.shape[1]
        if S + T > self.max_len:
            raise ValueError(f"image tokens + text must fit max_len = {self.max_len}, got S = {S} and T = {T}")
        x = torch.cat([h_v, self.embed(ids)], dim=1) + self.pos[: S + T]     # (B, S + T, dim)
        return self.head(self.lm(x)[:, S:])                                  # (B, T, V): text positions only

    def loss(self, images: torch.Tensor, ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """-mean log p(ids[t] | image, ids[<t]) over the positions t where ``target_mask`` is True (the answer)."""
        return _masked_next_token_loss(self, images, _require_ids(ids, self.vocab_size, self.max_len + 1), target_mask)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompt_ids: torch.Tensor, max_new_tokens: int = 2,
                 prompt_mask: torch.Tensor | None = None) -> list[list[int]]:
        """Greedy continuation of each prompt (right-padded; ``prompt_mask`` True = real token), up to
        ``max_new_tokens`` tokens or <eos>; returns the new ids without <eos>."""
        prompt_ids = _require_ids(prompt_ids, self.vocab_size, self.max_len)
        mask = _require_mask(prompt_mask, prompt_ids, self.pad_id)
        require_int(max_new_tokens, "max_new_tokens")
        was_training = self.training
        self.eval()
        lengths, out = mask.sum(dim=1), [[] for _ in range(len(prompt_ids))]
        for n in lengths.unique().tolist():                                 # prompts of one length together
            rows = (lengths == n).nonzero().flatten()
            seqs, done = prompt_ids[rows, :n], torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
            for _ in range(max_new_tokens):
                nxt = self(images[rows], seqs)[:, -1].argmax(dim=-1).masked_fill(done, self.eos_id)
                seqs, done = torch.cat([seqs, nxt[:, None]], dim=1), done | (nxt == self.eos_id)
                if done.all():
                    break
            for r, row in zip(rows.tolist(), seqs[:, n:].tolist()):
                out[r] = row[: row.index(self.eos_id)] if self.eos_id in row else row
        self.train(was_training)
        return out


# ---- resamplers: a fixed number of tokens per image -----------------------------------------------

def _require_tokens(x: object, dim: int, name: str = "x") -> torch.Tensor:
    x = require_floating(require_rank(x, name, 3, f"(B, N, {dim})"), name)
    if x.shape[-1] != dim or x.shape[1] == 0:
        raise ValueError(f"{name} must be (B, N, {dim}) with N >= 1, got shape {tuple(x.shape)}")
    return x


class PerceiverResampler(nn.Module):
    """Flamingo's Perceiver resampler (Alayrac et al., 2022): R learned latents read the N image tokens.

        for each of the ``depth`` layers:
            L <- L + MHA(q = LN(L), k = v = [LN(X); LN(L)])     the latents attend to the image AND to themselves
            L <- L + FFN(LN(L))
        out = LN(L)                                             (B, N, dim) -> (B, num_latents, dim)

    The output has ``num_latents`` tokens whatever N is. Nothing here adds positions to X, so the output
    does not depend on the order of the image tokens (attention treats its keys as a set); positions, if
    wanted, come with the tokens. (Flamingo also adds learned time embeddings for video frames; one image
    needs none.)
    """

    def __init__(self, dim: int, num_latents: int, depth: int, num_heads: int, *, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.dim = require_int(dim, "dim")
        self.latents = nn.Parameter(torch.randn(require_int(num_latents, "num_latents"), dim))   # (R, dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "norm_x": nn.LayerNorm(dim), "norm_l": nn.LayerNorm(dim), "attn": MultiHeadAttention(dim, num_heads),
            "norm_ffn": nn.LayerNorm(dim), "ffn": FeedForward(dim, max(1, round(mlp_ratio * dim)))})
            for _ in range(require_int(depth, "depth")))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _require_tokens(x, self.dim)                                         # (B, N, dim)
        lat = self.latents.expand(len(x), -1, -1)                                # (B, R, dim)
        for layer in self.layers:
            q = layer["norm_l"](lat)
            kv = torch.cat([layer["norm_x"](x), q], dim=1)                       # (B, N + R, dim)
            lat = lat + layer["attn"](q, kv, kv, need_weights=False)[0]         # fused fast path
            lat = lat + layer["ffn"](layer["norm_ffn"](lat))
        return self.norm(lat)                                                    # (B, R, dim)


class QFormer(nn.Module):
    """The core of BLIP-2's Querying Transformer (Li et al., 2023): K learned queries, and in each layer

        Q <- Q + SelfAttn(LN(Q))              the queries exchange what they found
        Q <- Q + CrossAttn(LN(Q), X W_in)     and read the frozen image features
        Q <- Q + FFN(LN(Q))
        out = LN(Q) W_out                     (B, N, in_dim) -> (B, num_queries, out_dim)

    Kept from BLIP-2: learned queries, self-attention among them, cross-attention to the image, an FFN,
    and the final linear map into the language model's width. Dropped: the text branch that shares the
    self-attention, the BERT initialisation, cross-attention only every other layer, and the first-stage
    losses (contrastive, matching, captioning) — here it trains with the language model's loss only.
    Pre-LayerNorm (BERT is post-LN). ``in_dim`` / ``out_dim`` default to ``dim``.
    """

    def __init__(self, dim: int, num_queries: int, depth: int, num_heads: int, *, in_dim: int | None = None,
                 out_dim: int | None = None, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.dim, self.in_dim = require_int(dim, "dim"), require_int(in_dim or dim, "in_dim")
        self.out_dim = require_int(out_dim or dim, "out_dim")
        self.queries = nn.Parameter(torch.randn(require_int(num_queries, "num_queries"), dim))   # (K, dim)
        self.proj_in, self.proj_out = nn.Linear(self.in_dim, dim), nn.Linear(dim, self.out_dim)
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "norm_self": nn.LayerNorm(dim), "self_attn": MultiHeadAttention(dim, num_heads),
            "norm_cross": nn.LayerNorm(dim), "cross_attn": MultiHeadAttention(dim, num_heads),
            "norm_ffn": nn.LayerNorm(dim), "ffn": FeedForward(dim, max(1, round(mlp_ratio * dim)))})
            for _ in range(require_int(depth, "depth")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.proj_in(_require_tokens(x, self.in_dim))                      # (B, N, dim)
        q = self.queries.expand(len(x), -1, -1)                                  # (B, K, dim)
        for layer in self.layers:
            h = layer["norm_self"](q)
            q = q + layer["self_attn"](h, h, h, need_weights=False)[0]         # fused fast path
            q = q + layer["cross_attn"](layer["norm_cross"](q), kv, kv, need_weights=False)[0]
            q = q + layer["ffn"](layer["norm_ffn"](q))
        return self.proj_out(self.norm(q))                                       # (B, K, out_dim)


# ---- a CNN that returns image tokens -------------------------------------------------------------

class GridEncoder(nn.Module):
    """A small CNN read as a grid of tokens: three stride-2 ``conv3×3 → BatchNorm → ReLU`` blocks.

        (B, C, H, W) -> feature map (B, 4w, H/8, W/8) -> tokens (B, H/8 · W/8, 4w) + E_pos

    Each token describes one cell of the image, and the learned position embedding ``E_pos`` says which
    cell — so a decoder cross-attending to the tokens can point at *where* things are. ``E_pos`` starts
    at N(0, 1), the scale of the BatchNorm-ed features: a ViT-style 0.02 would be drowned by them and
    training would take longer to discover where the cells are. The stride-2 convolutions make it cheap
    enough to train on a CPU; ``out_dim = 4 · width``.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, image_size: int = 32) -> None:
        super().__init__()
        require_int(in_channels, "in_channels")
        require_int(width, "width")
        if require_int(image_size, "image_size", 8) % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three stride-2 stages), got {image_size}")
        layers, c = [], in_channels
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.grid = image_size // 8
        self.pos = nn.Parameter(torch.randn(self.grid * self.grid, 4 * width))
        self.in_channels, self.image_size, self.out_dim = in_channels, (image_size, image_size), 4 * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = _require_images(images, self.in_channels, self.image_size)
        return self.features(images).flatten(2).transpose(1, 2) + self.pos    # (B, grid², 4w)


# ---- captioning: decoding beyond greedy and beam (07_multimodal_transformers_decoding) -------------

def _require_real(value: object, name: str, low: float, high: float = math.inf, *, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ValueError(f"{name} must be a number in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    return float(value)


def length_penalty(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's length penalty (Wu et al., 2016):  lp(Y) = ((5 + |Y|) / 6)^α,  so lp = 1 for |Y| = 1 or α = 0.

    Beam search then ranks hypotheses by  s(Y) = log p(Y | x) / lp(Y).  ``lengths`` >= 1 (any shape).
    """
    alpha = _require_real(alpha, "alpha", 0.0)
    if not isinstance(lengths, torch.Tensor) or lengths.numel() == 0 or bool((lengths < 1).any()):
        raise ValueError(f"lengths must be a non-empty tensor of lengths >= 1, got {lengths!r}")
    return ((5 + lengths.float()) / 6) ** alpha


@torch.no_grad()
def beam_search(model: Captioner, images: torch.Tensor, max_len: int, beam_size: int,
                alpha: float = 0.0) -> tuple[list[list[int]], torch.Tensor]:
    """Beam search that ranks by the length-normalised score  s(Y) = Σ_t log p(w_t | w_<t, x) / lp(Y).

    ``alpha = 0`` is :meth:`Captioner.generate` with ``beam_size`` (raw log-probability). |Y| counts the
    generated tokens, <eos> included; a finished hypothesis keeps its score and its length. Returns the
    best caption per image (ids without <bos>/<eos>) and its raw log-probability (B,).
    """
    require_int(beam_size, "beam_size")
    if require_int(max_len, "max_len") + 1 > model.max_len:
        raise ValueError(f"max_len must be <= {model.max_len - 1} (positions incl. <bos>), got {max_len}")
    was_training, k, V = model.training, beam_size, model.vocab_size
    model.eval()
    memory = model.encode(images).repeat_interleave(k, dim=0)                 # (B k, S, dim)
    B = len(memory) // k
    seqs = memory.new_full((B * k, 1), model.bos_id, dtype=torch.long)
    logp_sum = memory.new_full((B, k), float("-inf"))
    logp_sum[:, 0] = 0.0                                                      # one live beam at the start
    lengths = torch.zeros(B * k, dtype=torch.long, device=memory.device)
    done = torch.zeros(B * k, dtype=torch.bool, device=memory.device)
    for _ in range(max_len):
        logp = model._next_log_probs(memory, seqs)                           # (B k, V)
        logp[done] = float("-inf")
        logp[done, model.pad_id] = 0.0                                        # a finished beam only pads, for free
        total = logp_sum.reshape(B * k, 1) + logp                             # (B k, V): raw log-probability
        lengths = lengths + (~done)                                           # finished ones keep their length
        rank = (total / length_penalty(lengths.clamp_min(1)[:, None], alpha)).view(B, k * V)
        idx = rank.topk(k, dim=1).indices                                     # (B, k)
        logp_sum = total.view(B, k * V).gather(1, idx)
        rows = (torch.arange(B, device=idx.device)[:, None] * k + idx // V).flatten()
        tok = (idx % V).flatten()
        seqs, lengths = torch.cat([seqs[rows], tok[:, None]], dim=1), lengths[rows]
        done = done[rows] | (tok == model.eos_id)
        if done.all():
            break
    final = logp_sum / length_penalty(lengths.view(B, k).clamp_min(1), alpha)          # (B, k)
    best = final.argmax(dim=1) + torch.arange(B, device=seqs.device) * k
    model.train(was_training)
    return model._strip(seqs[best]), logp_sum.flatten()[best]


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al., 2020) on the last axis: keep the smallest set of most probable tokens
    whose probability mass is >= p, i.e. token i (sorted by probability) stays iff Σ_{j<i} p_j < p; the
    other logits become -inf.  ``p = 1`` keeps every token.
    """
    logits = require_floating(require_tensor(logits, "logits"), "logits")
    p = _require_real(p, "p", 0.0, 1.0, low_open=True)
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)     # (..., V), most probable first
    before = probs.cumsum(dim=-1) - probs                                     # mass of the more probable tokens
    keep = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before < p)
    return logits.masked_fill(~keep, float("-inf"))


@torch.no_grad()
def sample_captions(model: Captioner, images: torch.Tensor, max_len: int, *, temperature: float = 1.0,
                    top_p: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """Ancestral sampling:  w_t ~ softmax(top_p(log p(· | w_<t, x) / T)),  stopping at <eos>.

    ``temperature = 0`` is greedy decoding (the limit T -> 0: all mass on the argmax). Caption ids per image.
    """
    temperature = _require_real(temperature, "temperature", 0.0)
    top_p = _require_real(top_p, "top_p", 0.0, 1.0, low_open=True)
    if require_int(max_len, "max_len") + 1 > model.max_len:
        raise ValueError(f"max_len must be <= {model.max_len - 1} (positions incl. <bos>), got {max_len}")
    was_training = model.training
    model.eval()
    memory = model.encode(images)                                             # (B, S, dim)
    seqs = memory.new_full((len(memory), 1), model.bos_id, dtype=torch.long)
    done = torch.zeros(len(memory), dtype=torch.bool, device=memory.device)
    for _ in range(max_len):
        logp = model._next_log_probs(memory, seqs)                           # (B, V); <pad>, <bos> are -inf
        if temperature == 0:
            nxt = logp.argmax(dim=-1)
        else:
            probs = top_p_filter(logp / temperature, top_p).softmax(dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]     # (B,)
        nxt = nxt.masked_fill(done, model.pad_id)
        seqs, done = torch.cat([seqs, nxt[:, None]], dim=1), done | (nxt == model.eos_id)
        if done.all():
            break
    model.train(was_training)
    return model._strip(seqs)


def cross_attention_cache(model: Captioner, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values of the image tokens for every decoder layer, (B, nh, S, hs) each:
    K = M W_K, V = M W_V depend only on the image, so they are computed once per caption."""
    out = []
    for block in model.decoder.blocks:
        attn = block.cross_attn
        _, w_k, w_v = attn.in_proj_weight.chunk(3)
        _, b_k, b_v = attn.in_proj_bias.chunk(3)
        out.append((attn._heads(memory, w_k, b_k), attn._heads(memory, w_v, b_v)))
    return out


def _attend(attn: MultiHeadAttention, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / √hs) v for queries q = h W_Q, then the output projection: (B, T, dim)."""
    w_q, b_q = attn.in_proj_weight.chunk(3)[0], attn.in_proj_bias.chunk(3)[0]
    out = F.scaled_dot_product_attention(attn._heads(h, w_q, b_q), k, v, attn_mask=mask)   # (B, nh, T, hs)
    return attn.out_proj(out.transpose(1, 2).reshape(h.shape))


@torch.no_grad()
def decode_cached(model: Captioner, cross: list[tuple[torch.Tensor, torch.Tensor]], ids: torch.Tensor,
                  cache) -> torch.Tensor:
    """Next-token logits (B, T, V) for the new ``ids`` (B, T) at positions len(cache) .. len(cache)+T-1.

    Equals ``model.decode(memory, all ids so far)[:, -T:]``: the self-attention keys/values of earlier
    positions come from ``cache`` (chapter 6's :class:`mmlearn.language_model.KVCache`, which grows),
    the image's from ``cross`` (:func:`cross_attention_cache`). Each step costs O(t), not O(t²).
    """
    start, T = len(cache), ids.shape[1]
    ids = _require_ids(ids, model.vocab_size, model.max_len - start)
    x = model.embed(ids) + model.pos[start:start + T]                         # (B, T, dim)
    for layer, (block, (ck, cv)) in enumerate(zip(model.decoder.blocks, cross)):
        h = block.norm1(x)
        attn = block.attn
        _, w_k, w_v = attn.in_proj_weight.chunk(3)
        _, b_k, b_v = attn.in_proj_bias.chunk(3)
        k, v = cache.extend(layer, attn._heads(h, w_k, b_k), attn._heads(h, w_v, b_v))   # (B, nh, S, hs)
        mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - T)
        x = x + _attend(attn, h, k, v, mask)
        x = x + _attend(block.cross_attn, block.norm_cross(x), ck, cv)
        x = x + block.ffn(block.norm2(x))
    return model.head(model.decoder.norm(x))                                  # (B, T, V)


@torch.no_grad()
def generate_cached(model: Captioner, images: torch.Tensor, max_len: int) -> list[list[int]]:
    """Greedy captions with a KV cache: one new token per step. Equals ``model.generate(images, max_len)``."""
    from mmlearn.language_model import KVCache  # chapter 6's cache

    if require_int(max_len, "max_len") + 1 > model.max_len:
        raise ValueError(f"max_len must be <= {model.max_len - 1} (positions incl. <bos>), got {max_len}")
    was_training = model.training
    model.eval()
    memory = model.encode(images)
    cross, cache = cross_attention_cache(model, memory), KVCache(len(model.decoder.blocks))
    seqs = memory.new_full((len(memory), 1), model.bos_id, dtype=torch.long)
    done = torch.zeros(len(memory), dtype=torch.bool, device=memory.device)
    for _ in range(max_len):
        logp = F.log_softmax(decode_cached(model, cross, seqs[:, -1:], cache)[:, -1], dim=-1)   # (B, V)
        logp[:, [model.pad_id, model.bos_id]] = float("-inf")
        nxt = logp.argmax(dim=-1).masked_fill(done, model.pad_id)
        seqs, done = torch.cat([seqs, nxt[:, None]], dim=1), done | (nxt == model.eos_id)
        if done.all():
            break
    model.train(was_training)
    return model._strip(seqs)


__all__ += ["length_penalty", "beam_search", "top_p_filter", "sample_captions", "cross_attention_cache",
            "decode_cached", "generate_cached"]


# ---- 2-D sine-cosine positions (07_multimodal_transformers_vit_analysis) ---------------------------

def sincos_positions_2d(height: int, width: int, dim: int, *, base: float = 10000.0,
                        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``(height * width, dim)`` of a grid, row by row (MoCo v3, MAE).

    Half the channels encode the column c, half the row r, each with chapter 6's 1-D encoding
    (:func:`mmlearn.attention.sinusoidal_positions` of size dim/2):

        P[r·width + c] = [PE(c); PE(r)],   PE(t)[2i] = sin(t ω_i),  PE(t)[2i+1] = cos(t ω_i),  ω_i = base^(-4i/dim)

    so ``P[n] · P[m] = Σ_i cos(ω_i Δc) + Σ_i cos(ω_i Δr)`` depends only on the offset between the cells.
    """
    from mmlearn.attention import sinusoidal_positions

    height, width = require_int(height, "height"), require_int(width, "width")
    dim = require_int(dim, "dim")
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 (sin/cos pairs for the column and the row), got {dim}")
    rows = torch.arange(height, device=device).repeat_interleave(width)         # (H*W,): r of cell n
    cols = torch.arange(width, device=device).repeat(height)                    # (H*W,): c of cell n
    pe_x = sinusoidal_positions(width, dim // 2, base=base, device=device, dtype=dtype)   # (W, dim/2)
    pe_y = sinusoidal_positions(height, dim // 2, base=base, device=device, dtype=dtype)  # (H, dim/2)
    return torch.cat([pe_x[cols], pe_y[rows]], dim=1)                             # (H*W, dim)


__all__ += ["sincos_positions_2d"]


# ---- the LLaVA recipe on a frozen, pretrained language model (07_multimodal_transformers_llava) ---------

__all__ += ["FrozenLMVLM", "answer_mask"]


def answer_mask(prompt_lengths: torch.Tensor, lengths: torch.Tensor, T: int) -> torch.Tensor:
    """Which positions of right-padded sequences are *answer* tokens (LLaVA's loss mask):

        m[b, t] = (prompt_lengths[b] <= t < lengths[b]),   (B, T) bool

    Positions before ``prompt_lengths[b]`` hold the prompt (image tokens excluded), those from
    ``lengths[b]`` on are padding.
    """
    prompt_lengths, lengths = require_tensor(prompt_lengths, "prompt_lengths"), require_tensor(lengths, "lengths")
    if prompt_lengths.ndim != 1 or prompt_lengths.shape != lengths.shape:
        raise ValueError(f"prompt_lengths and lengths must be (B,) each, got {tuple(prompt_lengths.shape)} and "
                         f"{tuple(lengths.shape)}")
    if bool((prompt_lengths < 0).any() | (prompt_lengths > lengths).any() | (lengths > T).any()):
        raise ValueError(f"need 0 <= prompt_lengths <= lengths <= T = {T}, got {prompt_lengths.tolist()} and "
                         f"{lengths.tolist()}")
    t = torch.arange(T, device=lengths.device)[None, :]                       # (1, T)
    return (t >= prompt_lengths[:, None]) & (t < lengths[:, None])           # (B, T)


class FrozenLMVLM(nn.Module):
    """The LLaVA recipe around a *pretrained, frozen* :class:`~mmlearn.language_model.CausalLM`:

        H_v = W_2 GELU(W_1 f(x) + b_1) + b_2                   two-layer MLP projector (LLaVA-1.5)
        p(w_{t+1} | x, w_≤t) = CausalLM(prefix = H_v, tokens = w)

    ``vision_encoder`` maps images to tokens ``(B, K, vision_dim)``; the K projected tokens are read
    before the words. The language model never receives a gradient (``requires_grad_(False)``, eval
    mode). ``freeze_vision`` also freezes the encoder (LLaVA's frozen CLIP ViT).
    """

    def __init__(self, vision_encoder: nn.Module, lm: nn.Module, *, vision_dim: int | None = None,
                 freeze_vision: bool = False) -> None:
        super().__init__()
        d_v, dim = _out_dim(vision_encoder, vision_dim, "vision_encoder"), lm.config.dim
        self.vision_encoder, self.lm = vision_encoder, lm
        self.projector = nn.Sequential(nn.Linear(d_v, dim), nn.GELU(), nn.Linear(dim, dim))
        lm.requires_grad_(False)
        vision_encoder.requires_grad_(not freeze_vision)
        self.freeze_vision = bool(freeze_vision)

    def train(self, mode: bool = True) -> FrozenLMVLM:
        super().train(mode)
        self.lm.eval()                                                       # frozen: no dropout
        if self.freeze_vision:
            self.vision_encoder.eval()
        return self

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """H_v: the image as K soft tokens (B, K, dim) in the language model's embedding space."""
        feats = self.vision_encoder(images)
        if feats.ndim != 3:
            raise ValueError(f"vision_encoder must return tokens (B, K, d), got shape {tuple(feats.shape)}")
        return self.projector(feats)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits of the text positions (B, T, V): [H_v; E[ids]] through the frozen language model."""
        h_v = self.prefix(images)                                            # (B, K, dim)
        return self.lm(ids, prefix=h_v)[:, h_v.shape[1]:]                    # (B, T, V)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """-mean over {t : target_mask[b, t]} of log p(ids[b, t] | image, ids[b, <t]) (t >= 1)."""
        return _masked_next_token_loss(self, images, ids, target_mask)
