"""Tests of mmlearn.features: every from-scratch piece against its torch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.testing import assert_close

from mmlearn import features as mf

F64 = torch.float64


# ---- convolution ----------------------------------------------------------------------------------

@st.composite
def conv_case(draw):
    """A random (x shape, weight shape, stride, padding) whose kernel fits the padded input."""
    B, C, C_out = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 9))
    W = draw(st.integers(max(1, kw - 2 * pw), 9))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return (B, C, H, W), (C_out, C, kh, kw), stride, (ph, pw), draw(st.booleans())


@given(conv_case())
def test_conv2d_matches_torch(case):
    x_shape, w_shape, stride, padding, with_bias = case
    x, w = torch.randn(x_shape, dtype=F64), torch.randn(w_shape, dtype=F64)
    b = torch.randn(w_shape[0], dtype=F64) if with_bias else None
    expected = F.conv2d(x, w, b, stride=stride, padding=padding)
    assert_close(mf.conv2d(x, w, b, stride, padding), expected)
    assert expected.shape[2] == mf.conv_output_size(x_shape[2], w_shape[2], stride[0], padding[0])
    assert expected.shape[3] == mf.conv_output_size(x_shape[3], w_shape[3], stride[1], padding[1])


@given(conv_case())
def test_im2col_matches_unfold(case):
    x_shape, w_shape, stride, padding, _ = case
    x = torch.randn(x_shape, dtype=F64)
    expected = F.unfold(x, w_shape[2:], padding=padding, stride=stride)
    assert_close(mf.im2col(x, w_shape[2:], stride, padding), expected)


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), ((1, 2), (2, 0))])
def test_conv2d_loops_matches_torch(stride, padding):
    x, w, b = torch.randn(2, 3, 6, 5, dtype=F64), torch.randn(4, 3, 3, 2, dtype=F64), torch.randn(4, dtype=F64)
    assert_close(mf.conv2d_loops(x, w, b, stride, padding), F.conv2d(x, w, b, stride, padding))
    assert_close(mf.conv2d_loops(x, w, None, stride, padding), F.conv2d(x, w, None, stride, padding))


def test_conv2d_device_unbatched_and_float32(device):
    x, w = torch.randn(3, 10, 11, device=device), torch.randn(5, 3, 3, 3, device=device)
    b = torch.randn(5, device=device)
    assert_close(mf.conv2d(x, w, b, 2, 1), F.conv2d(x, w, b, 2, 1), atol=1e-5, rtol=1e-5)
    assert mf.conv2d(x, w, b, 2, 1).device.type == device.type


def test_conv2d_gradcheck():
    x = torch.randn(2, 2, 5, 4, dtype=F64, requires_grad=True)
    w = torch.randn(3, 2, 2, 3, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: mf.conv2d(x, w, b, (2, 1), 1), (x, w, b))


@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0)), (3, 1, 0)])
def test_max_pool2d_matches_torch_values_and_gradients(kernel, stride, padding, device):
    x = torch.randn(2, 3, 9, 8, dtype=F64, device=device, requires_grad=True)
    ours, ref = mf.max_pool2d(x, kernel, stride, padding), F.max_pool2d(x, kernel, stride, padding)
    assert_close(ours, ref)
    g = torch.randn_like(ref)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(ref, x, g)
    assert_close(g_ours, g_ref)
    assert_close(mf.max_pool2d(x[0], kernel, stride, padding), F.max_pool2d(x[0], kernel, stride, padding))


@pytest.mark.parametrize("kernels, strides", [([3], [1]), ([3, 3], [1, 1]), ([3, 2, 3, 2], [1, 2, 1, 2]),
                                              ([5, 3, 3], [2, 2, 1])])
def test_receptive_field_equals_gradient_support(kernels, strides):
    """The input pixels that one output unit depends on (non-zero gradient) span exactly r pixels."""
    n = 64
    x = torch.zeros(1, 1, n, dtype=F64, requires_grad=True)
    h = x
    for k, s in zip(kernels, strides):
        h = F.conv1d(h, torch.ones(1, 1, k, dtype=F64), stride=s)
    h[0, 0, h.shape[-1] // 2].backward()
    support = x.grad[0, 0].nonzero().flatten()
    assert int(support.max() - support.min()) + 1 == mf.receptive_field(kernels, strides)


def test_conv_bad_inputs():
    x, w = torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="x must be"):
        mf.conv2d(torch.randn(5, 5), w)
    with pytest.raises(ValueError, match="C_in = 3"):
        mf.conv2d(x, torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="larger than the padded input"):
        mf.conv2d(x, torch.randn(2, 3, 7, 3))
    with pytest.raises(ValueError, match="bias must be"):
        mf.conv2d(x, w, torch.randn(3))
    with pytest.raises(ValueError, match="dtype"):
        mf.conv2d(x, w.double())
    with pytest.raises(ValueError, match="stride"):
        mf.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="padding"):
        mf.conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="floating"):
        mf.conv2d(x.long(), w.long())
    with pytest.raises(ValueError, match="half the kernel"):
        mf.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        mf.max_pool2d(x, 6)
    with pytest.raises(ValueError, match="one stride per kernel"):
        mf.receptive_field([3, 3], [1])


# ---- recurrent modules ----------------------------------------------------------------------------

PAIRS = [(mf.RNN, nn.RNN), (mf.LSTM, nn.LSTM), (mf.GRU, nn.GRU)]


def _initial(ref_cls, B, H, dtype, device, unbatched=False):
    shape = (1, H) if unbatched else (1, B, H)
    h0 = torch.randn(shape, dtype=dtype, device=device)
    return (h0, torch.randn(shape, dtype=dtype, device=device)) if ref_cls is nn.LSTM else h0


@pytest.mark.parametrize("ours_cls, ref_cls", PAIRS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
def test_recurrent_matches_torch(ours_cls, ref_cls, batch_first, with_h0, device):
    B, T, D, H = 3, 7, 5, 6
    ref = ref_cls(D, H, batch_first=batch_first).to(device, F64)
    ours = ours_cls(D, H, batch_first=batch_first).to(device, F64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((B, T, D) if batch_first else (T, B, D), dtype=F64, device=device)
    hx = _initial(ref_cls, B, H, F64, device) if with_h0 else None
    out_ours, out_ref = ours(x, hx), ref(x, hx)
    assert_close(out_ours, out_ref)
    # gradients of every parameter (backprop through time) equal torch's
    loss_ours = out_ours[0].square().sum() + sum(s.sum() for s in torch.utils._pytree.tree_leaves(out_ours[1]))
    loss_ref = out_ref[0].square().sum() + sum(s.sum() for s in torch.utils._pytree.tree_leaves(out_ref[1]))
    grads_ours = torch.autograd.grad(loss_ours, list(ours.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, list(ref.parameters()))
    for (name, _), g_o, g_r in zip(ref.named_parameters(), grads_ours, grads_ref):
        assert_close(g_o, g_r, msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("ours_cls, ref_cls", PAIRS)
def test_recurrent_state_dict_both_ways_and_options(ours_cls, ref_cls):
    kwargs = {"nonlinearity": "relu"} if ref_cls is nn.RNN else {}
    ours = ours_cls(4, 5, bias=False, **kwargs)
    ref = ref_cls(4, 5, bias=False, batch_first=True, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [p.shape for p in ours.state_dict().values()] == [p.shape for p in ref.state_dict().values()]
    ref.load_state_dict(ours.state_dict())                     # ours -> torch works too
    x = torch.randn(2, 6, 4)
    assert_close(ours(x), ref(x))
    # unbatched input (T, I) with an initial state (1, H)
    hx = _initial(ref_cls, 1, 5, torch.float32, "cpu", unbatched=True)
    assert_close(ours(x[0], hx), ref(x[0], hx))
    assert ours.out_dim == 5


@pytest.mark.parametrize("ours_cls, ref_cls", PAIRS)
def test_recurrent_mask_equals_packed_sequences(ours_cls, ref_cls):
    B, T, D, H = 4, 6, 3, 5
    ref = ref_cls(D, H, batch_first=True).double()
    ours = ours_cls(D, H).double()
    ours.load_state_dict(ref.state_dict())
    lengths = torch.tensor([6, 2, 4, 1])
    mask = torch.arange(T)[None] < lengths[:, None]            # (B, T), right padding
    x = torch.randn(B, T, D, dtype=F64)
    out_ours, state_ours = ours(x, mask=mask)
    packed_out, state_ref = ref(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    out_ref, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=T)
    assert_close(out_ours, out_ref)
    assert_close(state_ours, state_ref)


def test_gradcheck_lstm():
    lstm = mf.LSTM(2, 3).double()
    x = torch.randn(2, 4, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: lstm(x)[0], (x,))


@pytest.mark.parametrize("cell_fn, ref_cls", [(mf.rnn_cell, nn.RNNCell), (mf.lstm_cell, nn.LSTMCell),
                                              (mf.gru_cell, nn.GRUCell)])
def test_cells_match_torch_cells(cell_fn, ref_cls):
    ref = ref_cls(4, 3).double()
    x, h = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    state = (h, torch.randn(5, 3, dtype=F64)) if ref_cls is nn.LSTMCell else h
    assert_close(cell_fn(x, state, ref.weight_ih, ref.weight_hh, ref.bias_ih, ref.bias_hh), ref(x, state))


def test_recurrent_bad_inputs():
    lstm = mf.LSTM(4, 5)
    with pytest.raises(ValueError, match="input_size = 4"):
        lstm(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="x must be"):
        lstm(torch.randn(2, 3, 4, 1))
    with pytest.raises(ValueError, match="initial state must be"):
        lstm(torch.randn(2, 3, 4), (torch.zeros(2, 5), torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="pair"):
        lstm(torch.randn(2, 3, 4), torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="mask must be a bool"):
        lstm(torch.randn(2, 3, 4), mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="hidden_size"):
        mf.GRU(4, 0)
    with pytest.raises(ValueError, match="nonlinearity"):
        mf.RNN(4, 5, nonlinearity="sigmoid")


# ---- patches --------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_size, patch_size, channels", [(8, 4, 3), ((12, 8), (4, 2), 1), (32, 8, 3)])
def test_patch_embedding_equals_strided_conv(image_size, patch_size, channels, device):
    pe = mf.PatchEmbedding(image_size, patch_size, channels, dim=7).to(device, F64)
    H, W = pe.image_size
    x = torch.randn(2, channels, H, W, dtype=F64, device=device)
    conv = nn.Conv2d(channels, 7, patch_size, stride=patch_size).to(device, F64)
    with torch.no_grad():   # copy the weights by hand (independently of to_conv)
        conv.weight.copy_(pe.proj.weight.reshape(7, channels, *pe.patch_size))
        conv.bias.copy_(pe.proj.bias)
    expected = conv(x).flatten(2).transpose(1, 2)               # (B, N, dim)
    assert pe(x).shape == (2, pe.num_patches, 7)
    assert_close(pe(x), expected)
    assert_close(pe.to_conv()(x), conv(x))


def test_patchify_orders_patches_row_by_row():
    x = torch.arange(2 * 4 * 6, dtype=F64).reshape(1, 2, 4, 6)
    patches = mf.patchify(x, 2)                                 # (1, 6, 8)
    assert patches.shape == (1, 6, 8)
    assert_close(patches[0, 4], x[0, :, 2:4, 2:4].flatten())   # patch row 1, column 1


def test_patch_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        mf.PatchEmbedding(10, 4)
    pe = mf.PatchEmbedding(8, 4, 3, 5)
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 8, 8\)"):
        pe(torch.randn(1, 3, 12, 12))
    with pytest.raises(ValueError, match="divisible"):
        mf.patchify(torch.randn(1, 3, 9, 8), 4)


# ---- encoders -------------------------------------------------------------------------------------

def test_cnn_encoder_shapes(device):
    enc = mf.CNNEncoder(3, dim=24, width=4, grid=2).to(device)
    x = torch.rand(5, 3, 32, 32, device=device)
    assert enc(x).shape == (5, 24) and enc.out_dim == 24
    assert enc(x, return_sequence=True).shape == (5, 4, 24)
    assert enc.feature_map(x).shape == (5, 16, 4, 4)
    assert enc(torch.rand(2, 3, 48, 40, device=device)).shape == (2, 24)
    with pytest.raises(ValueError, match="3 channels"):
        enc(torch.rand(2, 1, 32, 32, device=device))
    with pytest.raises(ValueError, match="images must be"):
        enc(torch.rand(3, 32, 32, device=device))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_text_encoder_padding_does_not_change_the_encoding(cell, device):
    enc = mf.TextEncoder(20, dim=8, embed_dim=6, cell=cell).to(device)
    ids = torch.tensor([[5, 6, 7, 0, 0], [4, 9, 3, 2, 8]], device=device)
    mask = ids != 0
    short = enc(ids[:1, :3])                                    # the first sentence without padding
    assert enc(ids).shape == (2, 8) and enc.out_dim == 8
    assert_close(enc(ids)[:1], short)
    assert_close(enc(ids, mask)[:1], short)
    longer = torch.cat([ids, torch.zeros(2, 4, dtype=ids.dtype, device=device)], dim=1)
    assert_close(enc(longer), enc(ids))
    seq = enc(ids, mask, return_sequence=True)
    assert seq.shape == (2, 5, 8)
    assert torch.all(seq[0, 3:] == 0) and torch.all(seq[0, :3] != 0)
    assert_close(seq[1, -1], enc(ids)[1])


def test_text_encoder_bad_inputs():
    enc = mf.TextEncoder(10, dim=4)
    with pytest.raises(ValueError, match="integer"):
        enc(torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        enc(torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match="ids must be"):
        enc(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="cell"):
        mf.TextEncoder(10, 4, cell="transformer")


def test_audio_encoder_shapes_and_stats(device):
    enc = mf.AudioEncoder(n_mels=16, dim=12, hidden=8).to(device)
    mel = 10 * torch.randn(3, 16, 41, device=device) - 40
    enc.set_input_stats(mel)
    assert_close(enc.mean, mel.mean())
    assert enc(mel).shape == (3, 12) and enc.out_dim == 12
    assert enc(mel, return_sequence=True).shape == (3, 10, 12)
    with pytest.raises(ValueError, match=r"\(B, 16, frames"):
        enc(torch.randn(3, 8, 41, device=device))
    with pytest.raises(ValueError, match="mel must be"):
        enc(torch.randn(16, 41, device=device))


# ---- ShapesWorld baseline tasks -------------------------------------------------------------------

def test_task_labels_agree_with_captions_and_positions():
    from mmlearn.data import COLORS, SHAPES, SIZES, make_shapes, parse_caption

    batch = make_shapes(120, seed=3)
    labels = {task: mf.task_labels(batch, task) for task in mf.TASKS}
    for i, caption in enumerate(batch.captions):
        objects, _ = parse_caption(caption)
        size, color, shape = objects[0]                           # the leftmost object is mentioned first
        assert (SHAPES[labels["left_shape"][i]], COLORS[labels["left_color"][i]], SIZES[labels["left_size"][i]]) \
            == (shape, color, size)
        assert labels["count"][i] + 1 == len(objects)
        top = bool(batch.positions[i, 0, 1] < 0.5)
        assert labels["left_top"][i] == int(top)
        assert mf.task_classes("left_shape_top")[labels["left_shape_top"][i]] == f"{shape} {'top' if top else 'bottom'}"
    for task, y in labels.items():
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < len(mf.task_classes(task))


def test_shapes_inputs_and_multitask_loss():
    from mmlearn.data import make_shapes
    from mmlearn.preprocess import WordTokenizer

    batch = make_shapes(6, seed=1)
    tok = WordTokenizer().train(batch.captions)
    inputs = mf.shapes_inputs(batch, tok, n_mels=16)
    assert inputs["images"].shape == (6, 3, 32, 32) and inputs["mel"].shape[:2] == (6, 16)
    assert inputs["mask"].sum(1).tolist() == [len(tok.encode(c)) for c in batch.captions]
    assert [x.shape for x in mf.modality_inputs(inputs, "text")] == [inputs["ids"].shape, inputs["mask"].shape]
    logits = torch.randn(6, 7, dtype=F64)
    targets = torch.stack([torch.randint(0, 3, (6,)), torch.randint(0, 4, (6,))], dim=1)
    expected = F.cross_entropy(logits[:, :3], targets[:, 0]) + F.cross_entropy(logits[:, 3:], targets[:, 1])
    assert_close(mf.multitask_loss(logits, targets, [3, 4]), expected)
    accs = mf.multitask_accuracy(logits, targets, [3, 4])
    assert accs[1] == float((logits[:, 3:].argmax(1) == targets[:, 1]).float().mean())
    with pytest.raises(ValueError, match=r"logits must be \(B, 7\)"):
        mf.multitask_loss(logits[:, :5], targets, [3, 4])


def test_train_multitask_and_baselines_run_end_to_end():
    data = mf.make_task_data(n_train=64, n_test=32, tasks=("left_color", "count"))
    assert data.y_train.shape == (64, 2) and data.num_classes == [4, 2]
    results = mf.unimodal_baselines(data, modalities=("text",), dim=8, epochs=1, progress=False)
    assert set(results["text"]) == {"left_color", "count"}
    assert all(0.0 <= a <= 1.0 for a in results["text"].values())
    model, accs = mf.train_unimodal(data, "audio", dim=8, epochs=1, progress=False)
    assert not model.training and model.encoder.out_dim == 8 and set(accs) == {"left_color", "count"}
    assert_close(model.encoder.mean, data.train["mel"].mean())   # the input statistics were set


def test_task_bad_inputs():
    with pytest.raises(ValueError, match="task must be one of"):
        mf.task_classes("colour")
    with pytest.raises(ValueError, match="modality must be one of"):
        mf.make_encoder("video")
    with pytest.raises(ValueError, match="vocab_size"):
        mf.make_encoder("text")
    with pytest.raises(ValueError, match="out_dim"):
        mf.MultiTaskClassifier(nn.Linear(3, 4), [2])


def test_train_unimodal_is_seeded_and_follows_the_seed_offset(monkeypatch):
    from mmlearn.device import seed_offset

    data = mf.make_task_data(n_train=64, n_test=32, tasks=("left_color",))
    train = lambda: mf.train_unimodal(data, "text", dim=8, epochs=1, progress=False)[0].state_dict()
    first, again = train(), train()
    for name in first:
        assert_close(first[name], again[name])                   # same seed: the same model
    monkeypatch.setenv("MMLEARN_SEED", str(seed_offset() + 1))   # another offset: another initialisation
    other = train()
    assert not torch.equal(first["encoder.embed.weight"], other["encoder.embed.weight"])


# ---- the convolution backward pass, dilation, transposed convolution (03_features_cnn_backward) ----

@st.composite
def dilated_conv_case(draw):
    """(x shape, weight shape, stride, padding, dilation) whose dilated kernel fits the padded input."""
    B, C, C_out = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 10))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 10))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return (B, C, H, W), (C_out, C, kh, kw), stride, (ph, pw), (dh, dw)


@given(dilated_conv_case())
def test_dilated_conv2d_im2col_col2im_match_torch(case):
    x_shape, w_shape, stride, padding, dilation = case
    x, w, b = torch.randn(x_shape, dtype=F64), torch.randn(w_shape, dtype=F64), torch.randn(w_shape[0], dtype=F64)
    assert_close(mf.conv2d(x, w, b, stride, padding, dilation),
                 F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation))
    cols = mf.im2col(x, w_shape[2:], stride, padding, dilation)
    assert_close(cols, F.unfold(x, w_shape[2:], dilation=dilation, padding=padding, stride=stride))
    y = torch.randn_like(cols)
    folded = mf.col2im(y, x_shape[2:], w_shape[2:], stride, padding, dilation)
    assert_close(folded, F.fold(y, x_shape[2:], w_shape[2:], dilation=dilation, padding=padding, stride=stride))
    assert_close((cols * y).sum(), (x * folded).sum())                       # col2im is the adjoint of im2col


@given(dilated_conv_case())
def test_conv2d_backward_matches_autograd(case):
    x_shape, w_shape, stride, padding, dilation = case
    x = torch.randn(x_shape, dtype=F64, requires_grad=True)
    w = torch.randn(w_shape, dtype=F64, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=F64, requires_grad=True)
    y = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    g = torch.randn_like(y)
    expected = torch.autograd.grad(y, (x, w, b), g)
    got = mf.conv2d_backward(x.detach(), w.detach(), g, stride, padding, dilation)
    for name, e, o in zip(("dL/dx", "dL/dweight", "dL/dbias"), expected, got):
        assert_close(o, e, msg=lambda m, name=name: f"{name}: {m}")


def test_conv2d_backward_stride1_is_full_convolution_with_flipped_kernel():
    """dL/dx = conv(pad(G, k - 1 - p), flip(w) with in/out channels swapped) for stride 1."""
    x, w = torch.randn(2, 3, 7, 6, dtype=F64), torch.randn(4, 3, 3, 3, dtype=F64)
    for p in (0, 1, 2):
        g = torch.randn(2, 4, 7 + 2 * p - 2, 6 + 2 * p - 2, dtype=F64)
        grad_x, _, _ = mf.conv2d_backward(x, w, g, 1, p)
        full = F.conv2d(g, w.flip(2, 3).transpose(0, 1), padding=2 - p)
        assert_close(grad_x, full)


@given(dilated_conv_case(), st.integers(0, 2), st.integers(0, 2))
def test_conv_transpose2d_matches_torch_and_is_the_adjoint(case, oh, ow):
    x_shape, w_shape, stride, padding, dilation = case
    x, w = torch.randn(x_shape, dtype=F64), torch.randn(w_shape, dtype=F64)
    y = torch.randn_like(F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation))
    op = (min(oh, stride[0] - 1), min(ow, stride[1] - 1))
    b = torch.randn(w_shape[1], dtype=F64)
    try:
        expected = F.conv_transpose2d(y, w, b, stride=stride, padding=padding, output_padding=op, dilation=dilation)
    except RuntimeError:                                   # torch rejects an empty output; so must we
        with pytest.raises(ValueError):
            mf.conv_transpose2d(y, w, b, stride, padding, op, dilation)
        return
    assert_close(mf.conv_transpose2d(y, w, b, stride, padding, op, dilation), expected)
    xt = mf.conv_transpose2d(y, w, None, stride, padding, 0, dilation)
    if xt.shape == x.shape:                                # ⟨conv(x), y⟩ = ⟨x, conv_T(y)⟩
        assert_close((F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation) * y).sum(), (x * xt).sum())


def test_conv_backward_and_transpose_bad_inputs():
    x, w = torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="grad_out must have the output's shape"):
        mf.conv2d_backward(x, w, torch.randn(1, 2, 5, 5))
    with pytest.raises(ValueError, match="output_padding must be smaller than the stride"):
        mf.conv_transpose2d(torch.randn(1, 2, 3, 3), w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="C_out = 4"):
        mf.conv_transpose2d(torch.randn(1, 4, 3, 3), w)
    with pytest.raises(ValueError, match="cols must be"):
        mf.col2im(torch.randn(1, 10, 9), (5, 5), 3)
    with pytest.raises(ValueError, match="dilation"):
        mf.conv2d(x, w, dilation=0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        mf.conv2d(x, w, dilation=3)


# ---- stacked / bidirectional recurrent networks, the adding problem (03_features_rnn_long_range) ----

@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, True), (2, False), (2, True), (3, True)])
def test_stacked_rnn_matches_torch(cls, num_layers, bidirectional, device):
    ref = cls(4, 6, num_layers=num_layers, bidirectional=bidirectional, batch_first=True).double().to(device)
    x = torch.randn(3, 7, 4, dtype=F64, device=device)
    expected_out, expected_state = ref(x)
    out, state = mf.stacked_rnn(x, mf.recurrent_layers_from_torch(ref))
    assert_close(out, expected_out)
    assert_close(state, expected_state)


def test_stacked_rnn_bad_inputs():
    with pytest.raises(ValueError, match="nn.RNN, nn.LSTM or nn.GRU"):
        mf.recurrent_layers_from_torch(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="layers must be"):
        mf.stacked_rnn(torch.randn(2, 3, 4), [])
    with pytest.raises(ValueError, match="x must be"):
        mf.stacked_rnn(torch.randn(3, 4), [[mf.GRU(4, 5)]])


def test_adding_problem():
    x, y = mf.adding_problem(500, 12, seed=3)
    assert x.shape == (500, 12, 2) and y.shape == (500,)
    markers = x[..., 1]
    assert torch.all(markers.sum(1) == 2) and torch.all(markers[:, :6].sum(1) == 1)   # one in each half
    assert_close(y, (x[..., 0] * markers).sum(1))
    assert torch.equal(mf.adding_problem(500, 12, seed=3)[0], x)
    assert not torch.equal(mf.adding_problem(500, 12, seed=4)[0], x)
    # the constant prediction 1 has mean squared error Var(y) = 1/6, within 4 standard errors
    big = mf.adding_problem(20000, 10, seed=0)[1]
    se = float(((big - 1) ** 2).std()) / 20000**0.5
    assert abs(float(((big - 1) ** 2).mean()) - 1 / 6) < 4 * se
    with pytest.raises(ValueError, match="length must be"):
        mf.adding_problem(10, 1)
