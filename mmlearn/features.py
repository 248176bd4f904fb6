"""Feature extraction from scratch (chapter 3): convolution, pooling, recurrent cells, patches, encoders.

The source articles write ``x = Conv2D(k, s)(I)``, ``x = RNN(W, b)(T)`` and
``h_t = LSTM(x_t, h_{t-1})`` and never open them. This module opens them:

* :func:`conv2d_loops` (seven nested loops, for teaching) → :func:`im2col` → :func:`conv2d`
  (one matrix product), equal to ``F.conv2d`` (dilation included); :func:`max_pool2d` equal to ``F.max_pool2d``;
* the backward pass by hand: :func:`col2im` (= ``F.fold``), :func:`conv2d_backward` (= autograd) and
  :func:`conv_transpose2d` (the adjoint, = ``F.conv_transpose2d``);
* :class:`RNN`, :class:`LSTM`, :class:`GRU`: single-layer recurrent modules whose parameters have the
  names and layout of ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (``load_state_dict`` works both ways);
* :func:`stacked_rnn` and :func:`recurrent_layers_from_torch` (stacked / bidirectional networks equal to
  ``nn.GRU(num_layers=L, bidirectional=True)`` etc.), :func:`adding_problem` (a long-range task);
* :class:`PatchEmbedding` (the first layer of a Vision Transformer: a strided convolution in disguise);
* small encoders used by later chapters: :class:`CNNEncoder`, :class:`TextEncoder`, :class:`AudioEncoder`;
* the ShapesWorld unimodal-baseline protocol that chapter 4 must beat: :data:`TASKS`, :func:`task_labels`,
  :func:`shapes_inputs`, :func:`make_task_data`, :func:`make_encoder`, :class:`MultiTaskClassifier`,
  :func:`train_multitask`, :func:`train_unimodal`, :func:`unimodal_baselines`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmlearn._validate import require_floating, require_in, require_rank, require_tensor

IntPair = int | tuple[int, int]


# ---- sizes ----------------------------------------------------------------------------------------

def _pair(value: IntPair, name: str, *, allow_zero: bool = False) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 1) -> (2, 1)``; raise unless every entry is a positive (or ≥ 0) int."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    low = 0 if allow_zero else 1
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in pair):
        raise ValueError(f"{name} must be an int ≥ {low} or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def conv_output_size(n: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    r"""Output length of a convolution or pooling along one axis.

    .. math:: n_\text{out} = \left\lfloor \frac{n + 2p - k}{s} \right\rfloor + 1

    (the number of positions ``0, s, 2s, …`` at which a window of ``k`` fits inside ``n + 2p``).
    """
    if n + 2 * padding < kernel_size:
        raise ValueError(f"kernel size {kernel_size} is larger than the padded input {n} + 2·{padding}")
    return (n + 2 * padding - kernel_size) // stride + 1


def receptive_field(kernel_sizes: Sequence[int], strides: Sequence[int]) -> int:
    r"""Receptive field (in input pixels, along one axis) of one output unit of a stack of layers.

    .. math:: r_\ell = r_{\ell-1} + (k_\ell - 1)\prod_{j<\ell} s_j, \qquad r_0 = 1
    """
    if len(kernel_sizes) != len(strides):
        raise ValueError(f"need one stride per kernel size, got {len(kernel_sizes)} kernels, {len(strides)} strides")
    r, jump = 1, 1
    for k, s in zip(kernel_sizes, strides):
        if k < 1 or s < 1:
            raise ValueError(f"kernel sizes and strides must be ≥ 1, got kernel {k}, stride {s}")
        r, jump = r + (k - 1) * jump, jump * s
    return r


# ---- convolution ----------------------------------------------------------------------------------

def _check_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                padding: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> None:
    require_rank(x, "x", 4, "(B, C_in, H, W)")
    require_rank(weight, "weight", 4, "(C_out, C_in, kh, kw)")
    require_floating(x, "x")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight must have the dtype of x ({x.dtype}), got {weight.dtype}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must have C_in = {x.shape[1]} input channels (x is {tuple(x.shape)}), "
                         f"got weight of shape {tuple(weight.shape)}")
    if bias is not None and (require_tensor(bias, "bias").shape != (weight.shape[0],)):
        raise ValueError(f"bias must be (C_out,) = ({weight.shape[0]},), got shape {tuple(bias.shape)}")
    for axis, (n, k, p) in enumerate(zip(x.shape[2:], (_dilated_size(k, d) for k, d in zip(weight.shape[2:], dilation)),
                                         padding)):
        if n + 2 * p < k:
            raise ValueError(f"kernel size {k} on axis {axis + 2} is larger than the padded input "
                             f"{n} + 2·{p} = {n + 2 * p}")


def conv2d_loops(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: IntPair = 1, padding: IntPair = 0) -> torch.Tensor:
    r"""2-D cross-correlation written as plain loops (slow; for teaching and benchmarks).

    .. math:: y_{b,o,i,j} = \beta_o + \sum_{c}\sum_{u}\sum_{v} w_{o,c,u,v}\; x_{b,c,\,s_h i + u,\, s_w j + v}

    with ``x`` zero-padded by ``padding``. Equals :func:`F.conv2d`.
    """
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding", allow_zero=True)
    _check_conv(x, weight, bias, (ph, pw))
    x = F.pad(x, (pw, pw, ph, ph))
    B, C, H, W = x.shape
    C_out, _, kh, kw = weight.shape
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    y = x.new_zeros(B, C_out, Ho, Wo)
    for b in range(B):
        for o in range(C_out):
            for i in range(Ho):
                for j in range(Wo):
                    total = x.new_zeros(())
                    for c in range(C):
                        for u in range(kh):
                            for v in range(kw):
                                total = total + weight[o, c, u, v] * x[b, c, sh * i + u, sw * j + v]
                    y[b, o, i, j] = total + (bias[o] if bias is not None else 0.0)
    return y


def _dilated_size(k: int, d: int) -> int:
    """Extent of a kernel of ``k`` taps spaced ``d`` apart: ``d (k - 1) + 1``."""
    return d * (k - 1) + 1


def im2col(x: torch.Tensor, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1) -> torch.Tensor:
    """Every ``kh × kw`` window of ``x`` as one column: ``(B, C, H, W) -> (B, C·kh·kw, L)``.

    Rows are ordered ``(c, u, v)`` (channel first), columns ``(i, j)`` row-major over the ``Ho × Wo``
    output positions, ``L = Ho·Wo``; tap ``(u, v)`` of window ``(i, j)`` reads ``x[s i + d u, s j + d v]``.
    Equals ``F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)``.
    """
    require_rank(x, "x", 4, "(B, C, H, W)")
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
    ph, pw = _pair(padding, "padding", allow_zero=True)
    dh, dw = _pair(dilation, "dilation")
    eh, ew = _dilated_size(kh, dh), _dilated_size(kw, dw)
    conv_output_size(x.shape[2], eh, sh, ph), conv_output_size(x.shape[3], ew, sw, pw)  # validates sizes
    x = F.pad(x, (pw, pw, ph, ph))
    windows = x.unfold(2, eh, sh).unfold(3, ew, sw)[..., ::dh, ::dw]   # (B, C, Ho, Wo, kh, kw), a view
    B, C, Ho, Wo = windows.shape[:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(B, C * kh * kw, Ho * Wo)


def col2im(cols: torch.Tensor, output_size: IntPair, kernel_size: IntPair, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1) -> torch.Tensor:
    r"""The adjoint of :func:`im2col`: add every column back onto the window it came from.

    .. math:: x[b, c, s i + d u - p, s j + d v - p] \mathrel{+}= \text{cols}[b, (c, u, v), (i, j)]

    ``(B, C·kh·kw, L) -> (B, C, H, W)`` with ``(H, W) = output_size``; entries that fall on the padding
    are dropped. So :math:`\langle \operatorname{im2col}(x), Y \rangle = \langle x,
    \operatorname{col2im}(Y) \rangle`.
    Equals ``F.fold(cols, output_size, kernel_size, dilation, padding, stride)``.
    """
    require_rank(cols, "cols", 3, "(B, C·kh·kw, L)")
    (H, W), (kh, kw) = _pair(output_size, "output_size"), _pair(kernel_size, "kernel_size")
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding", allow_zero=True)
    dh, dw = _pair(dilation, "dilation")
    Ho = conv_output_size(H, _dilated_size(kh, dh), sh, ph)
    Wo = conv_output_size(W, _dilated_size(kw, dw), sw, pw)
    B, rows, L = cols.shape
    if rows % (kh * kw) or L != Ho * Wo:
        raise ValueError(f"cols must be (B, C·{kh}·{kw}, {Ho}·{Wo}) for output size {(H, W)}, "
                         f"got shape {tuple(cols.shape)}")
    cols = cols.reshape(B, rows // (kh * kw), kh, kw, Ho, Wo)
    canvas = cols.new_zeros(B, rows // (kh * kw), H + 2 * ph, W + 2 * pw)
    for u in range(kh):                                          # k² strided adds, each over all windows
        for v in range(kw):
            canvas[:, :, dh * u:dh * u + sh * (Ho - 1) + 1:sh, dw * v:dw * v + sw * (Wo - 1) + 1:sw] += cols[:, :, u, v]
    return canvas[:, :, ph:ph + H, pw:pw + W]


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> torch.Tensor:
    r"""2-D convolution (cross-correlation, as in every deep-learning library) as one matrix product.

    .. math:: Y = W_\text{mat}\, \operatorname{im2col}(X) + \beta, \qquad
              W_\text{mat} \in \mathbb{R}^{C_\text{out} \times C_\text{in} k_h k_w}

    ``x`` is ``(B, C_in, H, W)`` (or unbatched ``(C_in, H, W)``), ``weight`` ``(C_out, C_in, kh, kw)``,
    ``bias`` ``(C_out,)``; ``dilation`` spaces the taps. Returns ``(B, C_out, Ho, Wo)``. Equals :func:`F.conv2d`.
    """
    require_tensor(x, "x")
    if x.ndim == 3:
        return conv2d(x[None], weight, bias, stride, padding, dilation)[0]
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding", allow_zero=True)
    dh, dw = _pair(dilation, "dilation")
    _check_conv(x, weight, bias, (ph, pw), (dh, dw))
    C_out, _, kh, kw = weight.shape
    Ho = conv_output_size(x.shape[2], _dilated_size(kh, dh), sh, ph)
    Wo = conv_output_size(x.shape[3], _dilated_size(kw, dw), sw, pw)
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))   # (B, C·kh·kw, L)
    y = weight.reshape(C_out, -1) @ cols                        # (C_out, C·kh·kw) @ (B, C·kh·kw, L) -> (B, C_out, L)
    if bias is not None:
        y = y + bias[:, None]
    return y.reshape(x.shape[0], C_out, Ho, Wo)


def conv2d_backward(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, stride: IntPair = 1,
                    padding: IntPair = 0, dilation: IntPair = 1
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Gradients of :func:`conv2d` by hand: ``(dL/dx, dL/dweight, dL/dbias)`` from ``G = dL/dy``.

    .. math:: \frac{\partial L}{\partial W_\text{mat}} = \sum_b G_b\, \operatorname{im2col}(x_b)^\top, \quad
              \frac{\partial L}{\partial x} = \operatorname{col2im}(W_\text{mat}^\top G), \quad
              \frac{\partial L}{\partial \beta_o} = \sum_{b,i,j} G_{b,o,i,j}

    For stride 1 the input gradient is the *full* convolution of ``G`` with the flipped kernel.
    ``grad_out`` must have the shape of ``conv2d(x, weight, stride=stride, padding=padding, dilation=dilation)``.
    """
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding", allow_zero=True)
    dh, dw = _pair(dilation, "dilation")
    _check_conv(x, weight, None, (ph, pw), (dh, dw))
    C_out, _, kh, kw = weight.shape
    B, _, H, W = x.shape
    expected = (B, C_out, conv_output_size(H, _dilated_size(kh, dh), sh, ph),
                conv_output_size(W, _dilated_size(kw, dw), sw, pw))
    if require_tensor(grad_out, "grad_out").shape != expected:
        raise ValueError(f"grad_out must have the output's shape {expected}, got {tuple(grad_out.shape)}")
    G = grad_out.reshape(B, C_out, -1)                                        # (B, C_out, L)
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))                  # (B, C_in·kh·kw, L)
    grad_weight = (G @ cols.transpose(1, 2)).sum(0).reshape(weight.shape)     # Σ_b G_b colsᵀ
    grad_x = col2im(weight.reshape(C_out, -1).T @ G, (H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    return grad_x, grad_weight, grad_out.sum(dim=(0, 2, 3))


def conv_transpose2d(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                     dilation: IntPair = 1) -> torch.Tensor:
    r"""Transposed convolution: the adjoint of :func:`conv2d` with the same ``weight``, plus a bias.

    .. math:: \operatorname{conv\_T}(y) = \operatorname{col2im}(W_\text{mat}^\top Y), \qquad
              \langle \operatorname{conv}(x), y \rangle = \langle x, \operatorname{conv\_T}(y) \rangle

    ``y`` is ``(B, C_out, Hy, Wy)``, ``weight`` ``(C_out, C_in, kh, kw)`` (the conv's weight, which is
    torch's ``ConvTranspose2d(C_out, C_in, k)`` layout), ``bias`` ``(C_in,)``. Output side
    ``(Hy - 1) s - 2p + d (k - 1) + output_padding + 1``. Equals :func:`F.conv_transpose2d`.
    """
    require_rank(y, "y", 4, "(B, C_out, H, W)")
    require_rank(weight, "weight", 4, "(C_out, C_in, kh, kw)")
    if weight.shape[0] != y.shape[1]:
        raise ValueError(f"weight must be (C_out = {y.shape[1]}, C_in, kh, kw) for y of shape {tuple(y.shape)}, "
                         f"got {tuple(weight.shape)}")
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding", allow_zero=True)
    (oh, ow), (dh, dw) = _pair(output_padding, "output_padding", allow_zero=True), _pair(dilation, "dilation")
    if oh >= sh or ow >= sw:
        raise ValueError(f"output_padding must be smaller than the stride {(sh, sw)}, got {(oh, ow)}")
    B, C_out, Hy, Wy = y.shape
    C_in, kh, kw = weight.shape[1:]
    H, W = (Hy - 1) * sh - 2 * ph + _dilated_size(kh, dh) + oh, (Wy - 1) * sw - 2 * pw + _dilated_size(kw, dw) + ow
    if H < 1 or W < 1:
        raise ValueError(f"padding {(ph, pw)} leaves no output for y of shape {tuple(y.shape)}")
    x = col2im(weight.reshape(C_out, -1).T @ y.reshape(B, C_out, -1), (H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    return x if bias is None else x + bias[:, None, None]                      # (B, C_in, H, W)


def max_pool2d(x: torch.Tensor, kernel_size: IntPair, stride: IntPair | None = None,
               padding: IntPair = 0) -> torch.Tensor:
    r"""Max pooling: the largest value in each window (padding counts as :math:`-\infty`).

    .. math:: y_{b,c,i,j} = \max_{0 \le u < k_h,\; 0 \le v < k_w} x_{b,c,\,s_h i + u,\, s_w j + v}

    ``stride`` defaults to ``kernel_size``. ``x`` is ``(B, C, H, W)`` or ``(C, H, W)``. Equals
    :func:`F.max_pool2d` (like it, requires ``padding ≤ kernel_size / 2``).
    """
    require_rank(x, "x", (3, 4), "(B, C, H, W) or (C, H, W)")
    require_floating(x, "x")
    if x.ndim == 3:
        return max_pool2d(x[None], kernel_size, stride, padding)[0]
    (kh, kw) = _pair(kernel_size, "kernel_size")
    (sh, sw) = _pair(stride if stride is not None else (kh, kw), "stride")
    (ph, pw) = _pair(padding, "padding", allow_zero=True)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding must be at most half the kernel size {(kh, kw)}, got {(ph, pw)}")
    conv_output_size(x.shape[2], kh, sh, ph), conv_output_size(x.shape[3], kw, sw, pw)  # validates sizes
    x = F.pad(x, (pw, pw, ph, ph), value=float("-inf"))
    windows = x.unfold(2, kh, sh).unfold(3, kw, sw)             # (B, C, Ho, Wo, kh, kw)
    return windows.amax(dim=(-2, -1))


# ---- recurrent cells ------------------------------------------------------------------------------
# Each cell has two forms: ``*_step`` takes the input projection gx = x W_ihᵀ + b_ih already computed
# (the module computes it for all time steps at once, one big matmul), ``*_cell`` is the textbook form.

def _rnn_step(gx: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor | None,
              nonlinearity: str = "tanh") -> torch.Tensor:
    a = gx + F.linear(h, weight_hh, bias_hh)                     # (B, H)
    return torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)


def _lstm_step(gx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], weight_hh: torch.Tensor,
               bias_hh: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    h, c = state
    i, f, g, o = (gx + F.linear(h, weight_hh, bias_hh)).chunk(4, dim=-1)   # 4 × (B, H), torch's order
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    return o * torch.tanh(c), c


def _gru_step(gx: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor,
              bias_hh: torch.Tensor | None) -> torch.Tensor:
    r_x, z_x, n_x = gx.chunk(3, dim=-1)                                     # 3 × (B, H), torch's order
    r_h, z_h, n_h = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return (1 - z) * n + z * h


def rnn_cell(x: torch.Tensor, h: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
             bias_ih: torch.Tensor | None = None, bias_hh: torch.Tensor | None = None,
             nonlinearity: str = "tanh") -> torch.Tensor:
    r"""One step of an Elman RNN: :math:`h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})`. Equals ``nn.RNNCell``."""
    require_in(nonlinearity, "nonlinearity", ("tanh", "relu"))
    return _rnn_step(F.linear(x, weight_ih, bias_ih), h, weight_hh, bias_hh, nonlinearity)


def lstm_cell(x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], weight_ih: torch.Tensor,
              weight_hh: torch.Tensor, bias_ih: torch.Tensor | None = None,
              bias_hh: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One LSTM step (gates stacked ``i, f, g, o`` in the rows of the weights). Equals ``nn.LSTMCell``.

    .. math::
        i = \sigma(W_{ii}x + W_{hi}h + b_i),\; f = \sigma(W_{if}x + W_{hf}h + b_f),\;
        g = \tanh(W_{ig}x + W_{hg}h + b_g),\; o = \sigma(W_{io}x + W_{ho}h + b_o) \\
        c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')
    """
    return _lstm_step(F.linear(x, weight_ih, bias_ih), state, weight_hh, bias_hh)


def gru_cell(x: torch.Tensor, h: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
             bias_ih: torch.Tensor | None = None, bias_hh: torch.Tensor | None = None) -> torch.Tensor:
    r"""One GRU step (gates stacked ``r, z, n``). Equals ``nn.GRUCell``.

    .. math::
        r = \sigma(W_{ir}x + b_{ir} + W_{hr}h + b_{hr}),\; z = \sigma(W_{iz}x + b_{iz} + W_{hz}h + b_{hz}) \\
        n = \tanh(W_{in}x + b_{in} + r \odot (W_{hn}h + b_{hn})), \qquad h' = (1 - z) \odot n + z \odot h
    """
    return _gru_step(F.linear(x, weight_ih, bias_ih), h, weight_hh, bias_hh)


class _Recurrent(nn.Module):
    """A single-layer recurrent module with the parameter names and layout of ``nn.RNN/LSTM/GRU``."""

    num_gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, batch_first: bool = True) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.input_size, self.hidden_size, self.batch_first = input_size, hidden_size, batch_first
        G = self.num_gates * hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(G, input_size))    # rows: gates stacked
        self.weight_hh_l0 = nn.Parameter(torch.empty(G, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(G)) if bias else None
        self.bias_hh_l0 = nn.Parameter(torch.empty(G)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform on ±1/√H, as torch does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @property
    def out_dim(self) -> int:
        return self.hidden_size

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, batch_first={self.batch_first}"

    def _step(self, gx: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _initial(self, hx: torch.Tensor | None, x: torch.Tensor, batch: int, unbatched: bool) -> torch.Tensor:
        shape = (1, self.hidden_size) if unbatched else (1, batch, self.hidden_size)
        if hx is None:
            return x.new_zeros(batch, self.hidden_size)
        if require_tensor(hx, "initial state").shape != shape:
            raise ValueError(f"initial state must be (num_layers=1{', B' if not unbatched else ''}, H) = {shape}, "
                             f"got shape {tuple(hx.shape)}")
        return hx.reshape(batch, self.hidden_size)

    def _run(self, x: torch.Tensor, hx: tuple[torch.Tensor | None, ...],
             mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Unroll over time. Returns output in the caller's layout and the final state(s) ``(1, B, H)``."""
        require_rank(x, "x", (2, 3), "(B, T, input_size) / (T, B, input_size) or unbatched (T, input_size)")
        require_floating(x, "x")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x must have input_size = {self.input_size} features on its last axis, "
                             f"got shape {tuple(x.shape)}")
        unbatched = x.ndim == 2
        x = x[None] if unbatched else (x if self.batch_first else x.transpose(0, 1))   # (B, T, I)
        B, T, _ = x.shape
        mask = self._check_mask(mask, B, T, unbatched)
        state = tuple(self._initial(h, x, B, unbatched) for h in hx)
        gx = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)                              # (B, T, G·H)
        outputs = []
        for t in range(T):
            new = self._step(gx[:, t], state)
            if mask is not None:   # padded step: keep the state, output zeros (as packed sequences do)
                new = tuple(torch.where(mask[:, t, None], n, s) for n, s in zip(new, state))
            state = new
            outputs.append(state[0] if mask is None else state[0] * mask[:, t, None])
        out = torch.stack(outputs, dim=1) if T else x.new_zeros(B, 0, self.hidden_size)    # (B, T, H)
        if unbatched:
            return out[0], tuple(s for s in state)
        return (out if self.batch_first else out.transpose(0, 1)), tuple(s[None] for s in state)

    @staticmethod
    def _check_mask(mask: torch.Tensor | None, B: int, T: int, unbatched: bool) -> torch.Tensor | None:
        if mask is None:
            return None
        expected = (T,) if unbatched else (B, T)
        if require_tensor(mask, "mask").dtype != torch.bool or mask.shape != expected:
            raise ValueError(f"mask must be a bool tensor of shape {expected} (True = real step), "
                             f"got {mask.dtype} of shape {tuple(mask.shape)}")
        return mask[None] if unbatched else mask


class RNN(_Recurrent):
    r"""Elman RNN, :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`, over a whole sequence.

    ``forward(x, h0=None, mask=None) -> (output, h_n)``: ``x`` is ``(B, T, I)`` when ``batch_first``
    (the default here; torch's default is ``False``) else ``(T, B, I)``, or unbatched ``(T, I)``;
    ``h0`` and ``h_n`` are ``(1, B, H)``; ``output`` holds every ``h_t``. ``mask`` ``(B, T)`` (True = real step,
    our addition) freezes the state on padded steps, as ``pack_padded_sequence`` does.
    State-dict compatible with ``nn.RNN(I, H, batch_first=True)``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, batch_first: bool = True,
                 nonlinearity: str = "tanh") -> None:
        self.nonlinearity = require_in(nonlinearity, "nonlinearity", ("tanh", "relu"))
        super().__init__(input_size, hidden_size, bias, batch_first)

    def _step(self, gx, state):
        return (_rnn_step(gx, state[0], self.weight_hh_l0, self.bias_hh_l0, self.nonlinearity),)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        output, (h_n,) = self._run(x, (h0,), mask)
        return output, h_n


class LSTM(_Recurrent):
    r"""LSTM over a whole sequence (gates ``i, f, g, o``; see :func:`lstm_cell`).

    ``forward(x, (h0, c0)=None, mask=None) -> (output, (h_n, c_n))``, shapes as in :class:`RNN`.
    State-dict compatible with ``nn.LSTM(I, H, batch_first=True)``.
    """

    num_gates = 4

    def _step(self, gx, state):
        return _lstm_step(gx, state, self.weight_hh_l0, self.bias_hh_l0)

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError(f"hx must be a pair (h0, c0), got {type(hx).__name__}")
        output, (h_n, c_n) = self._run(x, tuple(hx) if hx is not None else (None, None), mask)
        return output, (h_n, c_n)


class GRU(_Recurrent):
    r"""GRU over a whole sequence (gates ``r, z, n``; see :func:`gru_cell`).

    ``forward(x, h0=None, mask=None) -> (output, h_n)``, shapes as in :class:`RNN`.
    State-dict compatible with ``nn.GRU(I, H, batch_first=True)``.
    """

    num_gates = 3

    def _step(self, gx, state):
        return (_gru_step(gx, state[0], self.weight_hh_l0, self.bias_hh_l0),)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        output, (h_n,) = self._run(x, (h0,), mask)
        return output, h_n


# ---- deeper recurrent networks and a long-range task ----------------------------------------------

_TORCH_TO_OURS = {"RNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}


def recurrent_layers_from_torch(module: nn.RNNBase) -> list[list[_Recurrent]]:
    """Split a (stacked, possibly bidirectional) ``nn.RNN/LSTM/GRU`` into our single-layer modules.

    Returns ``layers[l][d]`` (``d = 0`` forward, ``d = 1`` backward) holding torch's weights
    ``weight_ih_l{l}``, ``weight_ih_l{l}_reverse``, …, for use with :func:`stacked_rnn`.
    """
    if not isinstance(module, nn.RNNBase) or type(module).__name__ not in _TORCH_TO_OURS:
        raise ValueError(f"module must be an nn.RNN, nn.LSTM or nn.GRU, got {type(module).__name__}")
    if module.proj_size or module.dropout:
        raise ValueError("modules with proj_size or dropout are not supported")
    cls = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}[type(module).__name__]
    extra = {"nonlinearity": module.nonlinearity} if cls is RNN else {}
    layers = []
    for layer in range(module.num_layers):
        size_in = module.input_size if layer == 0 else module.hidden_size * (2 if module.bidirectional else 1)
        directions = []
        for suffix in ("", "_reverse")[:2 if module.bidirectional else 1]:
            ours = cls(size_in, module.hidden_size, bias=module.bias, batch_first=True, **extra)
            ours = ours.to(device=module.weight_ih_l0.device, dtype=module.weight_ih_l0.dtype)
            ours.load_state_dict({name: getattr(module, f"{name[:-3]}_l{layer}{suffix}")
                                  for name in ours.state_dict()})
            directions.append(ours)
        layers.append(directions)
    return layers


def stacked_rnn(x: torch.Tensor, layers: Sequence[Sequence[_Recurrent]]) -> tuple[torch.Tensor, object]:
    r"""Run a stack of (bi)directional recurrent layers; layer :math:`\ell` reads the outputs of :math:`\ell - 1`.

    .. math:: h^{(\ell)}_t = \big[\overrightarrow{h}^{(\ell)}_t ;\, \overleftarrow{h}^{(\ell)}_t\big], \qquad
              \overleftarrow{h}^{(\ell)}_t = \mathrm{cell}\big(h^{(\ell - 1)}_t, \overleftarrow{h}^{(\ell)}_{t+1}\big)

    ``x`` is ``(B, T, I)``; ``layers[l]`` is ``[forward]`` or ``[forward, backward]``. Returns
    ``(output (B, T, D·H), h_n)`` in torch's layout: ``h_n`` ``(L·D, B, H)`` ordered layer by layer,
    forward first (for LSTMs the pair ``(h_n, c_n)``). Equals ``nn.GRU(..., num_layers=L, bidirectional=D == 2)``.
    """
    require_rank(x, "x", 3, "(B, T, input_size)")
    if not layers or any(len(directions) not in (1, 2) for directions in layers):
        raise ValueError(f"layers must be a non-empty list of [forward] or [forward, backward], got {layers!r}")
    finals = []
    for directions in layers:
        outputs = []
        for d, cell in enumerate(directions):
            out, state = cell(x.flip(1) if d else x)                      # the backward cell reads time reversed
            outputs.append(out.flip(1) if d else out)                     # (B, T, H), back in time order
            finals.append(state)
        x = torch.cat(outputs, dim=-1)                                    # (B, T, D·H): next layer's input
    if isinstance(finals[0], tuple):                                      # LSTM: ((1, B, H), (1, B, H)) each
        return x, (torch.cat([h for h, _ in finals]), torch.cat([c for _, c in finals]))
    return x, torch.cat(finals)


def adding_problem(n: int, length: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): add two marked numbers.

    ``x[:, t] = (v_t, m_t)`` with ``v_t ~ U(0, 1)`` and a marker ``m_t`` that is 1 at exactly two steps,
    one in each half of the sequence; the target is :math:`y = \sum_t m_t v_t`. Always predicting
    :math:`\mathbb{E}[y] = 1` gives mean squared error :math:`\operatorname{Var}(y) = 2/12 = 1/6`.
    Returns ``x (n, length, 2)`` and ``y (n,)``, float32, deterministic given ``seed``.
    """
    for name, value, low in (("n", n, 1), ("length", length, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}")
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=gen)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=gen)                  # one marker in each half
    second = torch.randint(half, length, (n,), generator=gen)
    markers = torch.zeros(n, length)
    markers[torch.arange(n), first] = 1.0
    markers[torch.arange(n), second] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(1)


# ---- patches --------------------------------------------------------------------------------------

def patchify(x: torch.Tensor, patch_size: IntPair) -> torch.Tensor:
    """Cut images into non-overlapping patches: ``(B, C, H, W) -> (B, N, C·p·p)``, ``N = (H/p)·(W/p)``.

    Patches are numbered row by row; each is flattened channel first, the layout of a conv weight.
    """
    require_rank(x, "x", 4, "(B, C, H, W)")
    ph, pw = _pair(patch_size, "patch_size")
    if x.shape[2] % ph or x.shape[3] % pw:
        raise ValueError(f"image size {tuple(x.shape[2:])} must be divisible by patch_size {(ph, pw)}")
    return im2col(x, (ph, pw), (ph, pw)).transpose(1, 2)        # (B, N, C·ph·pw)


class PatchEmbedding(nn.Module):
    r"""Cut an image into ``p × p`` patches and project each linearly: ``(B, C, H, W) -> (B, N, dim)``.

    .. math:: z_n = W\, \operatorname{vec}(x_{\text{patch } n}) + b, \qquad W \in \mathbb{R}^{d \times C p^2}

    This equals ``nn.Conv2d(C, dim, kernel_size=p, stride=p)`` with ``weight = W.view(dim, C, p, p)``,
    flattened and transposed (see :meth:`to_conv`).
    """

    def __init__(self, image_size: IntPair, patch_size: IntPair, in_channels: int = 3, dim: int = 64) -> None:
        super().__init__()
        self.image_size, self.patch_size = _pair(image_size, "image_size"), _pair(patch_size, "patch_size")
        if any(n % p for n, p in zip(self.image_size, self.patch_size)):
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if in_channels < 1 or dim < 1:
            raise ValueError(f"in_channels and dim must be ≥ 1, got {in_channels}, {dim}")
        self.in_channels, self.out_dim = in_channels, dim
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Linear(in_channels * self.patch_size[0] * self.patch_size[1], dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        require_rank(images, "images", 4, "(B, C, H, W)")
        expected = (self.in_channels, *self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (B, {', '.join(map(str, expected))}), got shape {tuple(images.shape)}")
        return self.proj(patchify(images, self.patch_size))       # (B, N, dim)

    def to_conv(self) -> nn.Conv2d:
        """The equivalent strided convolution (a new module holding copies of the weights)."""
        conv = nn.Conv2d(self.in_channels, self.out_dim, self.patch_size, stride=self.patch_size)
        conv = conv.to(self.proj.weight.device, self.proj.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.proj.weight.view_as(conv.weight))
            conv.bias.copy_(self.proj.bias)
        return conv


# ---- encoders used by later chapters ---------------------------------------------------------------

def _check_images(images: torch.Tensor, channels: int) -> None:
    require_rank(images, "images", 4, "(B, C, H, W)")
    require_floating(images, "images")
    if images.shape[1] != channels:
        raise ValueError(f"images must have {channels} channels, got shape {tuple(images.shape)}")
    if min(images.shape[2:]) < 8:
        raise ValueError(f"images must be at least 8×8 (three 2×2 poolings), got shape {tuple(images.shape)}")


class CNNEncoder(nn.Module):
    """A small CNN: three ``conv3×3 → ReLU → maxpool2`` blocks, then a pooled ``grid × grid`` map.

    ``forward(images)`` maps ``(B, C, H, W) -> (B, dim)`` (flattened grid → linear, so the vector keeps
    *where* things are, which global average pooling would throw away); ``forward(images,
    return_sequence=True)`` gives ``grid²`` region features ``(B, grid², dim)`` (with a learned position
    embedding) for attention-based fusion. ``feature_map(images)`` is the last conv map ``(B, 4·width, H/8, W/8)``.
    The convolutions are ``nn.Conv2d`` — the same map as :func:`conv2d`, with a faster kernel.
    """

    def __init__(self, in_channels: int = 3, dim: int = 64, *, width: int = 16, grid: int = 4) -> None:
        super().__init__()
        if min(in_channels, dim, width, grid) < 1:
            raise ValueError(f"in_channels, dim, width, grid must be ≥ 1, got {in_channels}, {dim}, {width}, {grid}")
        chans = (in_channels, width, 2 * width, 4 * width)
        self.features = nn.Sequential(*(m for c_in, c_out in zip(chans, chans[1:]) for m in (
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))))
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.head = nn.Linear(chans[-1] * grid * grid, dim)
        self.region_proj = nn.Linear(chans[-1], dim)
        self.region_pos = nn.Parameter(0.02 * torch.randn(grid * grid, dim))
        self.in_channels, self.out_dim, self.grid = in_channels, dim, grid

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.in_channels)
        return self.features(images)                               # (B, 4w, H/8, W/8)

    def forward(self, images: torch.Tensor, return_sequence: bool = False) -> torch.Tensor:
        grid = self.pool(self.feature_map(images))                  # (B, 4w, g, g)
        if return_sequence:
            regions = grid.flatten(2).transpose(1, 2)              # (B, g², 4w)
            return self.region_proj(regions) + self.region_pos     # (B, g², dim)
        return self.head(grid.flatten(1))                          # (B, dim)


class TextEncoder(nn.Module):
    """Token ids ``(B, L)`` → embedding → GRU (or LSTM) → the last real hidden state ``(B, dim)``.

    ``mask`` ``(B, L)`` bool (True = real token, as :func:`mmlearn.preprocess.pad_sequences` returns) —
    or, when omitted, ``ids != pad_id``. Padded steps leave the state unchanged, so padding never changes
    the encoding. ``return_sequence=True`` gives the per-token states ``(B, L, dim)`` (zeros at padding).
    """

    def __init__(self, vocab_size: int, dim: int = 64, *, embed_dim: int = 32, cell: str = "gru",
                 pad_id: int = 0) -> None:
        super().__init__()
        if min(vocab_size, dim, embed_dim) < 1 or not 0 <= pad_id < vocab_size:
            raise ValueError(f"need vocab_size, dim, embed_dim ≥ 1 and 0 ≤ pad_id < vocab_size, "
                             f"got {vocab_size}, {dim}, {embed_dim}, pad_id={pad_id}")
        self.cell = require_in(cell, "cell", ("gru", "lstm"))
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = (GRU if cell == "gru" else LSTM)(embed_dim, dim, batch_first=True)
        self.vocab_size, self.pad_id, self.out_dim = vocab_size, pad_id, dim

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                return_sequence: bool = False) -> torch.Tensor:
        require_rank(ids, "ids", 2, "(B, L) token ids")
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be an integer tensor, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got range [{int(ids.min())}, {int(ids.max())}]")
        mask = ids != self.pad_id if mask is None else mask
        output, state = self.rnn(self.embed(ids), mask=mask)        # (B, L, dim), (1, B, dim) or a pair
        if return_sequence:
            return output
        h_n = state[0] if self.cell == "lstm" else state
        return h_n[0]                                               # (B, dim)


class AudioEncoder(nn.Module):
    """Log-mel spectrogram ``(B, n_mels, frames)`` → two ``conv1d → ReLU → maxpool2`` blocks → GRU → ``(B, dim)``.

    The convolutions look at a few frames and all mel bands at once (pitch and timbre); the GRU reads
    the result in time order (which tone comes first). Inputs are standardised by fixed statistics set
    with :meth:`set_input_stats` (defaults 0 and 1) so that loudness, which carries information, survives.
    ``return_sequence=True`` gives ``(B, frames // 4, dim)``.
    """

    def __init__(self, n_mels: int, dim: int = 64, *, hidden: int = 32) -> None:
        super().__init__()
        if min(n_mels, dim, hidden) < 1:
            raise ValueError(f"n_mels, dim, hidden must be ≥ 1, got {n_mels}, {dim}, {hidden}")
        self.conv = nn.Sequential(nn.Conv1d(n_mels, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                                  nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2))
        self.rnn = GRU(hidden, dim, batch_first=True)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.n_mels, self.out_dim = n_mels, dim

    @torch.no_grad()
    def set_input_stats(self, mel: torch.Tensor) -> AudioEncoder:
        """Remember the mean and standard deviation of (training) spectrograms for input scaling."""
        self.mean.copy_(mel.mean())
        self.std.copy_(mel.std().clamp_min(1e-6))
        return self

    def forward(self, mel: torch.Tensor, return_sequence: bool = False) -> torch.Tensor:
        require_rank(mel, "mel", 3, "(B, n_mels, frames)")
        require_floating(mel, "mel")
        if mel.shape[1] != self.n_mels or mel.shape[2] < 4:
            raise ValueError(f"mel must be (B, {self.n_mels}, frames ≥ 4), got shape {tuple(mel.shape)}")
        z = self.conv((mel - self.mean) / self.std).transpose(1, 2)   # (B, frames // 4, hidden)
        output, h_n = self.rnn(z)
        return output if return_sequence else h_n[0]                 # (B, T', dim) or (B, dim)


# ---- ShapesWorld unimodal-baseline tasks (chapter 3; chapter 4 must beat these) ----------------------

TASKS: dict[str, str] = {
    "left_shape": "shape of the leftmost object (circle / square / triangle)",
    "left_color": "colour of the leftmost object (red / green / blue / yellow)",
    "left_size": "size of the leftmost object (small / large)",
    "count": "number of objects in the scene (one, two, …)",
    "left_top": "is the centre of the leftmost object in the upper half of the image? (no / yes)",
    "left_shape_top": "shape of the leftmost object and whether it is in the upper half (6 classes)",
}
"""Classification tasks on ShapesWorld scenes. Which modality carries the answer differs:
image — all; caption — all but the vertical position (``left_top`` only as a hint, through
"above"/"below"); audio — all but the vertical position (pitch = colour, waveform = shape,
loudness = size, one tone per object, left to right). ``left_shape_top`` needs the shape (easy from
text or audio) *and* the position (only in the image): the task where fusion should win."""

MODALITIES = ("image", "text", "audio")


def task_classes(task: str, max_objects: int = 2) -> tuple[str, ...]:
    """The class names of ``task`` (label ``k`` means ``task_classes(task)[k]``)."""
    from mmlearn.data import COLORS, NUMBER_WORDS, SHAPES, SIZES

    require_in(task, "task", TASKS)
    if task == "left_shape_top":
        return tuple(f"{s} {v}" for s in SHAPES for v in ("bottom", "top"))
    return {"left_shape": SHAPES, "left_color": COLORS, "left_size": SIZES, "left_top": ("no", "yes"),
            "count": NUMBER_WORDS[1:max_objects + 1]}[task]


def task_labels(batch, task: str) -> torch.Tensor:
    """Labels ``(N,)`` (int64) of ``task`` for a ``ShapesBatch`` (objects are ordered left to right)."""
    require_in(task, "task", TASKS)
    labels = batch.labels
    if task == "count":
        return labels["n_objects"] - 1
    top = (batch.positions[:, 0, 1] < 0.5).long()                    # y grows downwards
    if task == "left_top":
        return top
    if task == "left_shape_top":
        return 2 * labels["shape"][:, 0] + top
    return labels[task.removeprefix("left_")][:, 0].clone()


def shapes_inputs(batch, tokenizer, *, n_mels: int = 32, n_fft: int = 256, hop_length: int = 64,
                  device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The three modalities of a ``ShapesBatch`` as model inputs, on ``device``.

    Returns ``images`` (N, 3, H, W); ``ids``, ``mask`` (N, L) from ``tokenizer`` (a trained
    ``WordTokenizer``) and ``pad_sequences``; ``mel`` (N, n_mels, frames), the log-mel spectrogram.
    """
    from mmlearn.preprocess.audio import log_mel_spectrogram
    from mmlearn.preprocess.text import pad_sequences

    ids, mask = pad_sequences([tokenizer.encode(c) for c in batch.captions], tokenizer.pad_id)
    mel = log_mel_spectrogram(batch.audio, batch.sample_rate, n_fft, hop_length, n_mels)
    out = {"images": batch.images, "ids": ids, "mask": mask, "mel": mel}
    return {k: v.to(device) if device is not None else v for k, v in out.items()}


def modality_inputs(inputs: dict[str, torch.Tensor], modality: str) -> tuple[torch.Tensor, ...]:
    """The encoder arguments of one modality from :func:`shapes_inputs`' dict."""
    require_in(modality, "modality", MODALITIES)
    return {"image": (inputs["images"],), "text": (inputs["ids"], inputs["mask"]),
            "audio": (inputs["mel"],)}[modality]


def make_encoder(modality: str, dim: int = 32, *, vocab_size: int | None = None, n_mels: int = 32) -> nn.Module:
    """The book's small default encoder of a modality (``vocab_size`` is needed for text)."""
    require_in(modality, "modality", MODALITIES)
    if modality == "image":
        return CNNEncoder(3, dim, width=8)
    if modality == "text":
        if vocab_size is None:
            raise ValueError("a text encoder needs vocab_size, got None")
        return TextEncoder(vocab_size, dim, embed_dim=16)
    return AudioEncoder(n_mels, dim, hidden=32)


class MultiTaskClassifier(nn.Module):
    """An encoder (any module returning ``(B, out_dim)``) and one linear head per task.

    ``forward(*inputs)`` returns the logits of all tasks side by side, ``(B, Σ_k C_k)``; split them with
    ``logits.split(num_classes, dim=1)``. See :func:`multitask_loss` and :func:`multitask_accuracy`.
    """

    def __init__(self, encoder: nn.Module, num_classes: Sequence[int]) -> None:
        super().__init__()
        if not hasattr(encoder, "out_dim"):
            raise ValueError(f"encoder must expose out_dim, got {type(encoder).__name__}")
        if len(num_classes) == 0 or min(num_classes) < 2:
            raise ValueError(f"num_classes must list ≥ 2 classes per task, got {list(num_classes)}")
        self.encoder, self.num_classes = encoder, list(num_classes)
        self.head = nn.Linear(encoder.out_dim, sum(num_classes))   # all heads in one matrix

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(*inputs))                     # (B, Σ C_k)


def _split_logits(logits: torch.Tensor, targets: torch.Tensor, num_classes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    require_rank(logits, "logits", 2, "(B, sum of num_classes)")
    require_rank(targets, "targets", 2, "(B, n_tasks)")
    if logits.shape[1] != sum(num_classes) or targets.shape != (logits.shape[0], len(num_classes)):
        raise ValueError(f"logits must be (B, {sum(num_classes)}) and targets (B, {len(num_classes)}), "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    return logits.split(list(num_classes), dim=1)


def multitask_loss(logits: torch.Tensor, targets: torch.Tensor, num_classes: Sequence[int]) -> torch.Tensor:
    r"""Sum over tasks of the cross-entropies: :math:`\sum_k \mathrm{CE}(\text{logits}_k, y_k)`."""
    parts = _split_logits(logits, targets, num_classes)
    return sum(F.cross_entropy(z, targets[:, k]) for k, z in enumerate(parts))


@torch.no_grad()
def multitask_accuracy(logits: torch.Tensor, targets: torch.Tensor, num_classes: Sequence[int]) -> list[float]:
    """Accuracy of each task's head."""
    parts = _split_logits(logits, targets, num_classes)
    return [(z.argmax(1) == targets[:, k]).float().mean().item() for k, z in enumerate(parts)]


@dataclass
class TaskData:
    """Train and test inputs of the three modalities (see :func:`shapes_inputs`) and labels ``(N, n_tasks)``."""

    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    y_train: torch.Tensor
    y_test: torch.Tensor
    tasks: tuple[str, ...]
    num_classes: list[int]
    tokenizer: object


def make_task_data(n_train: int = 2000, n_test: int = 1000, *, tasks: Sequence[str] = tuple(TASKS), seed: int = 0,
                   device: torch.device | str | None = None, **shapes_kwargs) -> TaskData:
    """ShapesWorld ``train`` and ``test`` splits prepared for the baseline tasks (the chapter-3 protocol)."""
    from mmlearn.data import make_shapes
    from mmlearn.preprocess.text import WordTokenizer

    tasks = tuple(require_in(t, "task", TASKS) for t in tasks)
    train = make_shapes(n_train, seed=seed, split="train", **shapes_kwargs)
    test = make_shapes(n_test, seed=seed, split="test", **shapes_kwargs)
    tokenizer = WordTokenizer().train(train.captions)
    labels = lambda b: torch.stack([task_labels(b, t) for t in tasks], dim=1).to(device)  # (N, n_tasks)
    max_objects = train.labels["shape"].shape[1]
    return TaskData(shapes_inputs(train, tokenizer, device=device), shapes_inputs(test, tokenizer, device=device),
                    labels(train), labels(test), tasks, [len(task_classes(t, max_objects)) for t in tasks], tokenizer)


def train_multitask(model: nn.Module, data: TaskData, modalities: Sequence[str], *, epochs: int = 10,
                    lr: float = 3e-3, batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Train ``model(*inputs of modalities[0], *inputs of modalities[1], …)`` on all tasks with Adam and
    :func:`multitask_loss`; return the test accuracy of each task."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    from mmlearn.device import seed_everything
    from mmlearn.train import fit

    seed_everything(seed)
    inputs = lambda split: [x for m in modalities for x in modality_inputs(split, m)]
    dataset = TensorDataset(*inputs(data.train), data.y_train)
    # whole batches are indexed at once (no per-sample collation): same order as shuffle=True, less overhead
    loader = DataLoader(dataset, sampler=BatchSampler(RandomSampler(dataset), batch_size, drop_last=False),
                        batch_size=None)
    loss_fn = lambda logits, y: multitask_loss(logits, y, data.num_classes)
    device = data.y_train.device
    fit(model, loader, loss_fn, torch.optim.Adam(model.parameters(), lr=lr), epochs=epochs, device=device,
        progress=progress)
    model.eval()
    with torch.no_grad():
        logits = model(*inputs(data.test))
    return dict(zip(data.tasks, multitask_accuracy(logits, data.y_test, data.num_classes)))


def train_unimodal(data: TaskData, modality: str, *, dim: int = 32, epochs: int = 10, seed: int = 0,
                   progress: bool = True) -> tuple[MultiTaskClassifier, dict[str, float]]:
    """The chapter-3 baseline of one modality: ``make_encoder`` + linear heads, trained with :func:`train_multitask`.

    Returns the trained model (in eval mode; its ``.encoder`` gives ``(B, dim)`` features) and its test accuracies.
    The initialisation is seeded with :func:`mmlearn.seed_everything` (``seed + MMLEARN_SEED``), like the batch order.
    """
    from mmlearn.device import seed_everything

    seed_everything(seed)
    encoder = make_encoder(modality, dim, vocab_size=len(data.tokenizer), n_mels=data.train["mel"].shape[1])
    if modality == "audio":
        encoder.set_input_stats(data.train["mel"])
    model = MultiTaskClassifier(encoder, data.num_classes).to(data.y_train.device)
    accuracies = train_multitask(model, data, (modality,), epochs=epochs, seed=seed, progress=progress)
    return model.eval(), accuracies


def unimodal_baselines(data: TaskData, *, modalities: Sequence[str] = MODALITIES, dim: int = 32, epochs: int = 10,
                       seed: int = 0, progress: bool = True) -> dict[str, dict[str, float]]:
    """Test accuracy ``{modality: {task: accuracy}}`` of one small encoder + linear heads per modality."""
    return {m: train_unimodal(data, m, dim=dim, epochs=epochs, seed=seed, progress=progress)[1] for m in modalities}
