"""Checks for the exercises of chapter 3 (notebooks/03_features_*.ipynb)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmlearn.checks import CheckFailed, expect_close, expect_equal, expect_number, fresh_generator, register

F64 = torch.float64


def _ints(gen: torch.Generator, low: int, high: int, n: int) -> list[int]:
    return [int(v) for v in torch.randint(low, high + 1, (n,), generator=gen)]


# ---- 03_features_cnn ------------------------------------------------------------------------------

@register("ex-ch03-output-size", hint="Apply floor((n + 2p - k) / s) + 1 to the height and the width separately; "
                                      "the batch size stays, the channels become C_out.")
def _check_output_size(answer) -> None:
    try:
        got = tuple(int(v) for v in answer)
    except TypeError:
        raise CheckFailed(f"expected a tuple of four ints (B, C_out, H_out, W_out), got {answer!r}") from None
    if len(got) != 4:
        raise CheckFailed(f"expected four numbers (B, C_out, H_out, W_out), got {len(got)}")
    expected = (8, 16, 18, 24)
    names = ("batch size", "number of channels", "height", "width")
    for name, g, e in zip(names, got, expected):
        if g != e:
            raise CheckFailed(f"the {name} is not right (got {g})")


@register("ex-ch03-conv1d", hint="Pad, unfold axis 2 into windows (B, C_in, L, k), move k next to C_in, "
                                 "reshape to (B, C_in*k, L), multiply by weight.reshape(C_out, -1), add bias[:, None].")
def _check_conv1d(conv1d) -> None:
    gen = fresh_generator()
    for case in range(6):
        B, C_in, C_out, k = _ints(gen, 1, 3, 1) + _ints(gen, 1, 4, 2) + _ints(gen, 1, 5, 1)
        stride, padding = _ints(gen, 1, 3, 1)[0], _ints(gen, 0, 2, 1)[0]
        T = max(k - 2 * padding, 1) + _ints(gen, 0, 10, 1)[0]
        x = torch.randn(B, C_in, T, dtype=F64, generator=gen)
        w = torch.randn(C_out, C_in, k, dtype=F64, generator=gen)
        b = torch.randn(C_out, dtype=F64, generator=gen)
        what = f"case {case}: x {tuple(x.shape)}, weight {tuple(w.shape)}, stride {stride}, padding {padding}"
        expect_close(conv1d(x, w, b, stride, padding), F.conv1d(x, w, b, stride=stride, padding=padding), what=what)


@register("ex-ch03-receptive-field", hint="Keep a running jump (product of the strides so far); each layer adds "
                                          "(k - 1) × jump to the field, then multiplies the jump by its stride.")
def _check_receptive_field(answer) -> None:
    expect_number(answer, 43, what="receptive field of conv7/2, pool3/2, 4 × conv3", tol=0.5)


@register("ex-ch03-conv-cost", hint="Every output value (C_out · H_out · W_out of them) sums C_in · k · k products.")
def _check_conv_cost(conv_macs) -> None:
    gen = fresh_generator()
    for case in range(5):
        C_in, C_out, k, H, W = _ints(gen, 1, 9, 5)
        expect_number(conv_macs(C_in, C_out, k, H, W), C_out * H * W * C_in * k * k, tol=0.5,
                      what=f"case {case}: C_in {C_in}, C_out {C_out}, k {k}, output {H}×{W}")


# ---- 03_features_cnn_backward ---------------------------------------------------------------------

@register("ex-ch03-weight-grad", hint="dL/dw[o,c,u,v] = sum over b, i, j of G[b,o,i,j] x_pad[b,c,i+u,j+v]: pad x, swap "
                                      "axes 0 and 1 of x_pad and of G, call F.conv2d, swap axes 0 and 1 back.")
def _check_weight_grad(conv_weight_grad) -> None:
    gen = fresh_generator()
    for case in range(5):
        B, C_in, C_out = _ints(gen, 1, 3, 3)
        k, padding = _ints(gen, 1, 4, 1)[0], _ints(gen, 0, 2, 1)[0]
        H, W = (k + v for v in _ints(gen, 0, 5, 2))
        x = torch.randn(B, C_in, H, W, dtype=F64, generator=gen)
        w = torch.randn(C_out, C_in, k, k, dtype=F64, generator=gen, requires_grad=True)
        y = F.conv2d(x, w, padding=padding)
        g = torch.randn(y.shape, dtype=F64, generator=gen)
        (expected,) = torch.autograd.grad(y, w, g)
        expect_close(conv_weight_grad(x, g, k, padding), expected,
                     what=f"case {case}: x {tuple(x.shape)}, kernel {k}, padding {padding}")


@register("ex-ch03-transpose-size", hint="Invert the size formula: H_out = (H_in - 1) s - 2p + k + output_padding; "
                                         "the channels become the layer's second argument.")
def _check_transpose_size(answer) -> None:
    try:
        got = tuple(int(v) for v in answer)
    except TypeError:
        raise CheckFailed(f"expected a tuple of four ints (B, C_out, H_out, W_out), got {answer!r}") from None
    if len(got) != 4:
        raise CheckFailed(f"expected four numbers (B, C_out, H_out, W_out), got {len(got)}")
    for name, g, e in zip(("batch size", "number of channels", "height", "width"), got, (2, 8, 14, 18)):
        if g != e:
            raise CheckFailed(f"the {name} is not right (got {g})")


@register("ex-ch03-blurpool", hint="Build the (C, 1, 3, 3) kernel outer([1,2,1],[1,2,1])/16, pad circularly by 1, "
                                   "call F.conv2d with stride=2 and groups=C.")
def _check_blurpool(blur_subsample) -> None:
    gen = fresh_generator()
    b = torch.tensor([1.0, 2.0, 1.0], dtype=F64)
    for case in range(4):
        B, C = _ints(gen, 1, 3, 2)
        H, W = (2 * v for v in _ints(gen, 2, 6, 2))
        x = torch.randn(B, C, H, W, dtype=F64, generator=gen)
        kernel = (torch.outer(b, b) / 16).expand(C, 1, 3, 3)
        expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), kernel, stride=2, groups=C)
        expect_close(blur_subsample(x), expected, what=f"case {case}: x of shape {tuple(x.shape)}")


# ---- 03_features_rnn ------------------------------------------------------------------------------

@register("ex-ch03-lstm-params", hint="Four gates, each with an input matrix (H × I), a recurrent matrix (H × H) "
                                      "and — in PyTorch — two bias vectors of size H.")
def _check_lstm_params(answer) -> None:
    expect_number(answer, 4 * 64 * (32 + 64) + 2 * 4 * 64, what="parameters of nn.LSTM(32, 64)", tol=0.5)


@register("ex-ch03-gru-cell", hint="Split x W_ihᵀ + b_ih and h W_hhᵀ + b_hh into three chunks (r, z, n); the reset "
                                   "gate multiplies only the recurrent part of n; h' = (1 - z) n + z h.")
def _check_gru_cell(gru_cell) -> None:
    gen = fresh_generator()
    for case in range(4):
        B, D, H = _ints(gen, 1, 4, 1) + _ints(gen, 1, 6, 2)
        ref = torch.nn.GRUCell(D, H).double()
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn(p.shape, dtype=F64, generator=gen))
        x, h = torch.randn(B, D, dtype=F64, generator=gen), torch.randn(B, H, dtype=F64, generator=gen)
        with torch.no_grad():
            expected = ref(x, h)
            got = gru_cell(x, h, ref.weight_ih, ref.weight_hh, ref.bias_ih, ref.bias_hh)
        expect_close(got, expected, what=f"case {case}: batch {B}, input size {D}, hidden size {H}")


@register("ex-ch03-vanishing-steps", hint="The norm shrinks by the factor a at every step: solve a^T < 10^-3 "
                                          "for the smallest integer T.")
def _check_vanishing_steps(answer) -> None:
    expect_equal(_as_int(answer), math.ceil(math.log(1e-3) / math.log(0.9)), what="number of steps")


@register("ex-ch03-jacobian-product",
          hint="Start from the identity and multiply on the right by diag(1 - h_k²) W_hh for "
               "k = T, T-1, …, t+1 (row k-1 of states holds h_k).")
def _check_jacobian_product(jacobian_product) -> None:
    gen = fresh_generator()
    for case in range(4):
        H, T = _ints(gen, 1, 6, 1)[0], _ints(gen, 2, 8, 1)[0]
        t = _ints(gen, 1, T, 1)[0]
        W = torch.randn(H, H, dtype=F64, generator=gen) / H**0.5
        xs = torch.randn(T, H, dtype=F64, generator=gen)
        h, states = torch.zeros(H, dtype=F64), []
        for k in range(T):
            h = torch.tanh(xs[k] + W @ h)
            states.append(h)
        states = torch.stack(states)

        def h_T_from(h_t, t=t, T=T, xs=xs, W=W):                      # rerun steps t+1..T from h_t
            h = h_t
            for k in range(t, T):
                h = torch.tanh(xs[k] + W @ h)
            return h

        expected = torch.autograd.functional.jacobian(h_T_from, states[t - 1])
        expect_close(jacobian_product(W, states, t), expected, what=f"case {case}: H {H}, T {T}, t {t}")


def _as_int(answer) -> int:
    try:
        value = float(answer)
    except (TypeError, ValueError):
        raise CheckFailed(f"expected a whole number, got {answer!r}") from None
    if value != int(value):
        raise CheckFailed(f"expected a whole number of steps, got {value}")
    return int(value)


# ---- 03_features_rnn_long_range ------------------------------------------------------------------

@register("ex-ch03-adding-half", hint="The error is v_first - c; its mean square is smallest at c = E[v_first], "
                                      "where it equals the variance of a uniform number on [0, 1].")
def _check_adding_half(answer) -> None:
    expect_number(answer, 1 / 12, what="minimal mean squared error", tol=1e-3)


@register("ex-ch03-bidirectional", hint="Run the backward cell on x.flip(1) and flip its outputs back; concatenate "
                                        "the outputs on the last axis and the final states on the first.")
def _check_bidirectional(bidirectional) -> None:
    from mmlearn.features import recurrent_layers_from_torch

    gen = fresh_generator()
    for case in range(3):
        B, T, n_in, H = _ints(gen, 1, 3, 1) + _ints(gen, 1, 6, 3)
        ref = torch.nn.GRU(n_in, H, bidirectional=True, batch_first=True).double()
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn(p.shape, dtype=F64, generator=gen) / H**0.5)
        x = torch.randn(B, T, n_in, dtype=F64, generator=gen)
        (forward, backward), = recurrent_layers_from_torch(ref)
        with torch.no_grad():
            expected_out, expected_hn = ref(x)
            got = bidirectional(x, forward, backward)
        try:
            out, hn = got
        except (TypeError, ValueError):
            raise CheckFailed(f"expected a pair (output, h_n), got {type(got).__name__}") from None
        what = f"case {case}: x {tuple(x.shape)}, hidden size {H}"
        expect_close(out, expected_out, what=what + ", output")
        expect_close(hn, expected_hn, what=what + ", h_n")


@register("ex-ch03-clip-global", hint="total = sqrt of the sum of every tensor's squared entries; multiply every "
                                      "tensor by min(1, max_norm / (total + 1e-6)).")
def _check_clip_global(clip_by_global_norm) -> None:
    gen = fresh_generator()
    for case in range(4):
        shapes = [tuple(_ints(gen, 1, 4, int(_ints(gen, 1, 3, 1)[0]))) for _ in range(_ints(gen, 1, 4, 1)[0])]
        grads = [torch.randn(s, dtype=F64, generator=gen) * 3 for s in shapes]
        max_norm = [0.5, 1.0, 100.0, 2.0][case]
        params = [torch.nn.Parameter(torch.zeros(s, dtype=F64)) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        got = clip_by_global_norm([g.clone() for g in grads], max_norm)
        try:
            clipped, norm = got
        except (TypeError, ValueError):
            raise CheckFailed(f"expected a pair (clipped list, total norm), got {type(got).__name__}") from None
        what = f"case {case}: {len(shapes)} tensors, max_norm {max_norm}"
        expect_number(float(norm), float(expected_norm), what=what + ", total norm", tol=1e-9)
        if len(clipped) != len(params):
            raise CheckFailed(f"{what}: expected {len(params)} clipped tensors, got {len(clipped)}")
        for i, (c, p) in enumerate(zip(clipped, params)):
            expect_close(c, p.grad, what=f"{what}, tensor {i}")


# ---- 03_features_patches_baselines ----------------------------------------------------------------

@register("ex-ch03-patchify", hint="Split each spatial axis into (patch index, offset inside the patch); the patch "
                                   "indices must come right after B, the channel and the two offsets last.")
def _check_patchify(patchify) -> None:
    from mmlearn.features import patchify as reference

    gen = fresh_generator()
    for case in range(4):
        B, C = _ints(gen, 1, 3, 2)
        p = _ints(gen, 1, 4, 1)[0]
        gh, gw = _ints(gen, 1, 4, 2)
        x = torch.randn(B, C, gh * p, gw * p, dtype=F64, generator=gen)
        expect_close(patchify(x, p), reference(x, p), what=f"case {case}: images {tuple(x.shape)}, patch size {p}")


@register("ex-ch03-vit-patches", hint="N = (224 / 16)²; the projection is a linear map from C·p² numbers to dim, "
                                      "with a bias.")
def _check_vit_patches(answer) -> None:
    try:
        n, params = answer
    except (TypeError, ValueError):
        raise CheckFailed(f"expected a pair (number of patches, number of parameters), got {answer!r}") from None
    expect_number(n, (224 // 16) ** 2, what="number of patches", tol=0.5)
    expect_number(params, 3 * 16 * 16 * 768 + 768, what="number of parameters", tol=0.5)


@register("ex-ch03-majority", hint="Find the most frequent class in the *training* labels (torch.bincount, argmax) "
                                   "and return the fraction of test labels equal to it.")
def _check_majority(majority_accuracy) -> None:
    gen = fresh_generator()
    for case in range(5):
        k = _ints(gen, 2, 6, 1)[0]
        probs = torch.rand(k, generator=gen) + 0.1
        y_train = torch.multinomial(probs, 200, replacement=True, generator=gen)
        y_test = torch.multinomial(probs.flip(0), 100, replacement=True, generator=gen)
        top = int(torch.bincount(y_train, minlength=k).argmax())
        expected = float((y_test == top).float().mean())
        expect_number(majority_accuracy(y_train, y_test), expected,
                      what=f"case {case}: {k} classes (the majority must come from the training labels)", tol=1e-6)
