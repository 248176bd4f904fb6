"""Tests of mmlearn.practice: confusion matrix, early stopping, checkpoints, the toy patients."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmlearn.practice import (
    MARKER_HIGH,
    NOTE_MIN_RADIUS_MM,
    EarlyStopping,
    confusion_matrix,
    fit_early_stopping,
    lab_report,
    load_checkpoint,
    make_patients,
    markdown_table,
    radiology_note,
    save_checkpoint,
    stringify,
)
from mmlearn.train import evaluate

# ---- confusion matrix ----------------------------------------------------------------------------


@given(st.integers(1, 6), st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=0, max_size=40))
def test_confusion_matrix_equals_counting_loop(c, pairs):
    pairs = [(t % c, p % c) for t, p in pairs]
    target = torch.tensor([t for t, _ in pairs], dtype=torch.long)
    pred = torch.tensor([p for _, p in pairs], dtype=torch.long)
    expected = torch.zeros(c, c, dtype=torch.long)
    for t, p in pairs:
        expected[t, p] += 1
    got = confusion_matrix(pred, target, c)
    assert got.dtype == torch.int64
    torch.testing.assert_close(got, expected)


def test_confusion_matrix_from_logits_and_device(device):
    logits = torch.randn(50, 4, device=device)
    target = torch.randint(0, 4, (50,), device=device)
    m = confusion_matrix(logits, target, 4)
    assert m.device.type == device.type
    assert int(m.trace()) == int((logits.argmax(-1) == target).sum())
    torch.testing.assert_close(m.sum(1).cpu(), torch.bincount(target.cpu(), minlength=4))


@pytest.mark.parametrize("pred, target, c, match", [
    (torch.tensor([0, 3]), torch.tensor([0, 1]), 3, r"labels must lie in \[0, 3\)"),
    (torch.tensor([0, 1, 1]), torch.tensor([0, 1]), 3, r"pred must be \(N,\) labels or \(N, C\) logits"),
    (torch.tensor([0, 1]), torch.tensor([[0, 1]]), 3, r"target must be \(N,\) class indices"),
    (torch.tensor([0, 1]), torch.tensor([0, 1]), 0, r"num_classes must be a positive int"),
])
def test_confusion_matrix_bad_input(pred, target, c, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, c)


# ---- early stopping ------------------------------------------------------------------------------


def _reference_stop(scores, patience, mode, min_delta):
    best, best_epoch, bad = None, -1, 0
    for epoch, s in enumerate(scores):
        better = best is None or ((s > best + min_delta) if mode == "max" else (s < best - min_delta))
        best, best_epoch, bad = (s, epoch, 0) if better else (best, best_epoch, bad + 1)
        if bad >= patience:
            return best_epoch, epoch
    return best_epoch, len(scores) - 1


@given(st.lists(st.floats(0, 1), min_size=1, max_size=20), st.integers(1, 4), st.sampled_from(["max", "min"]),
       st.sampled_from([0.0, 0.05]))
def test_early_stopping_matches_reference(scores, patience, mode, min_delta):
    stopper = EarlyStopping(patience, mode=mode, min_delta=min_delta)
    stop_epoch = len(scores) - 1
    for epoch, s in enumerate(scores):
        stopper.step(s)
        if stopper.should_stop:
            stop_epoch = epoch
            break
    assert (stopper.best_epoch, stop_epoch) == _reference_stop(scores, patience, mode, min_delta)


def test_early_stopping_reports_improvements():
    stopper = EarlyStopping(2, mode="min")
    assert [stopper.step(v) for v in (1.0, 0.5, 0.7, 0.4)] == [True, True, False, True]
    assert stopper.best == 0.4 and stopper.best_epoch == 3 and not stopper.should_stop


@pytest.mark.parametrize("kwargs, match", [({"patience": 0}, "patience must be a positive int"),
                                           ({"patience": 2, "mode": "up"}, "mode must be 'max' or 'min'"),
                                           ({"patience": 2, "min_delta": -1.0}, "min_delta must be")])
def test_early_stopping_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


# ---- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, device):
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(8, 3, device=device)
    model(x).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "c.pt", model, opt, epoch=3, config={"lr": 0.01, "name": "mlp"})
    fresh = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).to(device)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    extra = load_checkpoint(path, fresh, fresh_opt, map_location=device)
    assert extra == {"epoch": 3, "config": {"lr": 0.01, "name": "mlp"}}
    torch.testing.assert_close(fresh(x), model(x))
    s0, s1 = opt.state_dict()["state"][0], fresh_opt.state_dict()["state"][0]
    torch.testing.assert_close(s1["exp_avg"], s0["exp_avg"])


class _NotAllowed:
    pass


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path):
    model = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "c.pt", model, thing=_NotAllowed())
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path, nn.Linear(2, 2))


def test_load_checkpoint_without_optimizer_state(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_checkpoint(path, nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))


# ---- training with early stopping ----------------------------------------------------------------


def test_fit_early_stopping_restores_the_best_epoch(tmp_path, device):
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    xv, yv = torch.randn(32, 4), torch.randint(0, 2, (32,))        # unrelated labels: validation gets worse
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=32)
    history = fit_early_stopping(model, train, val, F.cross_entropy, torch.optim.Adam(model.parameters(), lr=0.05),
                                 max_epochs=30, patience=2, checkpoint=tmp_path / "best.pt", device=device,
                                 progress=False)
    best = min(history.val_loss)
    assert history.epochs < 30                                     # it stopped early
    assert history.epochs - 1 - history.val_loss.index(best) == 2  # patience epochs after the best one
    restored = evaluate(model, val, F.cross_entropy, device=device)["loss"]
    assert restored == pytest.approx(best, rel=1e-5)


def test_fit_early_stopping_bad_epochs(tmp_path):
    loader = DataLoader(TensorDataset(torch.randn(4, 2), torch.zeros(4, dtype=torch.long)), batch_size=2)
    with pytest.raises(ValueError, match="max_epochs must be a positive int"):
        fit_early_stopping(nn.Linear(2, 2), loader, loader, F.cross_entropy, torch.optim.SGD(
            nn.Linear(2, 2).parameters(), lr=0.1), max_epochs=0, checkpoint=tmp_path / "c.pt")


def test_markdown_table():
    table = markdown_table(["model", "acc"], [["a", 0.91234], ["b", 1]], digits=2)
    assert table.splitlines() == ["| model | acc |", "|---|---|", "| a | 0.91 |", "| b | 1 |"]
    with pytest.raises(ValueError, match="every row must have 2 cells"):
        markdown_table(["model", "acc"], [["a"]])


# ---- the toy patients ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patients():
    return make_patients(300, seed=3)


def test_patients_shapes_and_rule(patients):
    p = patients
    assert p.images.shape == (300, 1, 32, 32) and p.images.dtype == torch.float32
    assert 0.0 <= float(p.images.min()) and float(p.images.max()) <= 1.0
    assert p.labs.shape == (300, 3) and len(p.records) == len(p.notes) == len(p) == 300
    torch.testing.assert_close(p.labels, (p.lesion & (p.marker_high | p.seizure)).long())
    torch.testing.assert_close(p.marker_high, p.labs[:, 0] > MARKER_HIGH)
    assert bool(((p.lesion_mm > 0) == p.lesion).all())
    assert all(("a seizure" in r) == bool(s) for r, s in zip(p.records, p.seizure))


def test_patients_are_deterministic_and_differ_by_seed(patients):
    again = make_patients(300, seed=3)
    torch.testing.assert_close(again.images, patients.images)
    assert again.records == patients.records
    other = make_patients(300, seed=4)
    assert not torch.equal(other.images, patients.images)


def test_lesions_are_visible_and_notes_follow_the_template(patients):
    p = patients
    saturated = (p.images >= 0.99).float().sum(dim=(1, 2, 3))     # a lesion is a disk of saturated pixels
    assert float(saturated[p.lesion_mm > 8].mean()) > float(saturated[~p.lesion].mean()) + 5
    for note, r in zip(p.notes, p.lesion_mm.tolist()):
        assert (note != "no acute findings.") == (r >= NOTE_MIN_RADIUS_MM)
    assert radiology_note(12.0).startswith("focal hyperintense lesion")


def test_stringify_and_subsets(patients):
    prompts = stringify(patients)
    for prompt, note, high in zip(prompts, patients.notes, patients.marker_high.tolist()):
        assert note in prompt and ("(high)" in prompt) == high
    assert lab_report(torch.tensor([7.25, 5.0, 6.0])).startswith("marker 7.2 mg/L (high)")
    sub = patients[torch.tensor([4, 1])]
    assert len(sub) == 2 and sub.records == [patients.records[4], patients.records[1]]
    torch.testing.assert_close(sub.images, patients.images[[4, 1]])


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n must be a positive int"),
                                           ({"n": 5, "image_size": 8}, "image_size must be an int >= 16")])
def test_make_patients_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_patients(**kwargs)


def test_plot_confusion_matrix():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmlearn.viz import plot_confusion_matrix

    fig = plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["a", "b"], title="t")
    assert fig.axes[0].get_title() == "t" and len(fig.axes[0].texts) == 3   # zero cells are left blank
    plt.close(fig)
    with pytest.raises(ValueError, match=r"matrix must be \(C, C\) with one label per class"):
        plot_confusion_matrix(torch.zeros(2, 3), ["a", "b"])


# ---- privacy and interpretability: roc_auc, membership_advantage, integrated_gradients -----------------

def _roc_auc_reference(scores, labels):
    """Trapezoid area under the ROC curve over every distinct threshold."""
    fpr, tpr = [0.0], [0.0]
    for t in sorted(set(scores.tolist()), reverse=True):
        hit = scores >= t
        tpr.append(float((hit & (labels == 1)).sum()) / float((labels == 1).sum()))
        fpr.append(float((hit & (labels == 0)).sum()) / float((labels == 0).sum()))
    return sum((f1 - f0) * (t1 + t0) / 2 for f0, f1, t0, t1 in zip(fpr, fpr[1:], tpr, tpr[1:])), fpr, tpr


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_and_advantage_equal_threshold_sweep(seed):
    from mmlearn.practice import membership_advantage, roc_auc

    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(4, 80, (1,), generator=g))
    labels = torch.randint(0, 2, (n,), generator=g)
    labels[:2] = torch.tensor([0, 1])
    scores = torch.randint(0, 5, (n,), generator=g).float() if seed % 2 else torch.randn(n, generator=g)
    auc, fpr, tpr = _roc_auc_reference(scores, labels)
    assert roc_auc(scores, labels) == pytest.approx(auc, abs=1e-12)
    assert membership_advantage(scores, labels) == pytest.approx(max(t - f for f, t in zip(fpr, tpr)), abs=1e-12)


def test_roc_auc_extremes():
    from mmlearn.practice import membership_advantage, roc_auc

    labels = torch.tensor([1, 1, 0, 0])
    assert roc_auc(torch.tensor([3.0, 2.0, 1.0, 0.0]), labels) == 1.0
    assert roc_auc(torch.tensor([0.0, 1.0, 2.0, 3.0]), labels) == 0.0
    assert roc_auc(torch.ones(4), labels) == 0.5 and membership_advantage(torch.ones(4), labels) == 0.0


@pytest.mark.parametrize("args, match", [((torch.ones(3), torch.tensor([0, 1])), "same shape"),
                                         ((torch.ones(2, 2), torch.ones(2, 2)), r"scores must be \(N,\)"),
                                         ((torch.ones(3), torch.tensor([0, 2, 1])), "only 0 and 1"),
                                         ((torch.ones(3), torch.ones(3)), "both classes")])
def test_roc_auc_bad_input(args, match):
    from mmlearn.practice import membership_advantage, roc_auc

    for fn in (roc_auc, membership_advantage):
        with pytest.raises(ValueError, match=match):
            fn(*args)


def test_integrated_gradients_linear_exact_and_completeness(device):
    from mmlearn.practice import integrated_gradients

    g = torch.Generator().manual_seed(0)
    b, d = 5, 11
    w = torch.randn(d, generator=g, dtype=torch.float64).to(device)
    x, x0 = (torch.randn(b, d, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    torch.testing.assert_close(integrated_gradients(lambda z: z @ w + 1.0, x, x0, steps=1), (x - x0) * w)
    # smooth nonlinear f: completeness up to the trapezoid error, O(1/steps^2)
    net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 1)).double().to(device)
    f = lambda z: net(z)[:, 0]
    ig = integrated_gradients(f, x, x0, steps=400)
    with torch.no_grad():
        torch.testing.assert_close(ig.sum(1), f(x) - f(x0), atol=1e-5, rtol=1e-5)


def test_integrated_gradients_bad_input():
    from mmlearn.practice import integrated_gradients

    f = lambda z: z.sum(1)
    with pytest.raises(ValueError, match="baseline must have the shape of x"):
        integrated_gradients(f, torch.ones(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="steps must be an int"):
        integrated_gradients(f, torch.ones(2, 3), torch.zeros(2, 3), steps=0)
    with pytest.raises(ValueError, match="f must return one value per example"):
        integrated_gradients(lambda z: z, torch.ones(2, 3), torch.zeros(2, 3))
