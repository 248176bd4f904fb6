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


def _as_int(answer) -> int:
    try:
        value = float(answer)
    except (TypeError, ValueError):
        raise CheckFailed(f"expected a whole number, got {answer!r}") from None
    if value != int(value):
        raise CheckFailed(f"expected a whole number of steps, got {value}")
    return int(value)


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
