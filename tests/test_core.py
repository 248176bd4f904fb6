"""The core of mmlearn: device selection, seeding, the training loop, plots, metrics."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import mmlearn
from mmlearn.metrics import accuracy
from mmlearn.train import History, evaluate, fit
from mmlearn.viz import plot_history, show_images


def test_version_is_a_string():
    assert isinstance(mmlearn.__version__, str) and mmlearn.__version__.count(".") == 2


def test_get_device_default_prefers_accelerators(monkeypatch):
    monkeypatch.delenv("MMLEARN_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert mmlearn.get_device().type == expected


def test_get_device_env_override(monkeypatch):
    monkeypatch.setenv("MMLEARN_DEVICE", "cpu")
    assert mmlearn.get_device() == torch.device("cpu")
    assert mmlearn.get_device(prefer="cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu0", ""])
def test_get_device_unknown(monkeypatch, name):
    monkeypatch.delenv("MMLEARN_DEVICE", raising=False)
    if name == "":
        monkeypatch.setenv("MMLEARN_DEVICE", "")
        assert mmlearn.get_device() is not None  # empty means "not set"
        return
    with pytest.raises(ValueError, match="unknown device"):
        mmlearn.get_device(prefer=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_get_device_unavailable(monkeypatch):
    monkeypatch.setenv("MMLEARN_DEVICE", "cuda")
    with pytest.raises(ValueError, match="MMLEARN_DEVICE.*not available|not available"):
        mmlearn.get_device()


def test_seed_everything_is_deterministic():
    mmlearn.seed_everything(3)
    a = torch.randn(5)
    mmlearn.seed_everything(3)
    torch.testing.assert_close(torch.randn(5), a, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_seed_everything_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="non-negative int"):
        mmlearn.seed_everything(seed)


def test_full_run_flag(monkeypatch):
    monkeypatch.setenv("MMLEARN_FULL", "1")
    assert mmlearn.full_run()
    monkeypatch.setenv("MMLEARN_FULL", "0")
    assert not mmlearn.full_run()


def test_lazy_submodules():
    assert mmlearn.train.fit is fit
    with pytest.raises(AttributeError):
        mmlearn.no_such_module  # noqa: B018


def _blobs(n=200):
    x = torch.cat([torch.randn(n, 2) + 2.5, torch.randn(n, 2) - 2.5])
    y = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    return TensorDataset(x, y)


def test_fit_learns_and_records_history(device):
    mmlearn.seed_everything(0)
    data = _blobs()
    model = torch.nn.Linear(2, 2)
    loader = DataLoader(data, batch_size=50, shuffle=True)
    before = evaluate(model, DataLoader(data, batch_size=400), torch.nn.functional.cross_entropy, device=device)
    history = fit(model, loader, torch.nn.functional.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.2),
                  epochs=3, device=device, val_loader=DataLoader(data, batch_size=400), metrics={"acc": accuracy},
                  progress=False)
    assert isinstance(history, History)
    assert history.epochs == 3 and len(history.val_loss) == 3 and len(history.val_metrics["acc"]) == 3
    assert len(history.step_loss) == 3 * len(loader)
    assert history.val_loss[-1] < before["loss"] / 2
    assert history.val_metrics["acc"][-1] > 0.97
    assert history.seconds > 0


def test_fit_rejects_bad_arguments():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        fit(model, [], torch.nn.functional.cross_entropy, opt, epochs=0, progress=False)
    with pytest.raises(ValueError, match="batch must be a tuple"):
        fit(model, [torch.zeros(2, 2)], torch.nn.functional.cross_entropy, opt, epochs=1, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [], torch.nn.functional.cross_entropy)


def test_accuracy_logits_and_labels():
    target = torch.tensor([0, 1, 2, 1])
    logits = torch.tensor([[2.0, 0, 0], [0, 3, 0], [0, 0, 1], [5, 0, 0]])
    assert accuracy(logits, target) == pytest.approx(0.75)
    assert accuracy(torch.tensor([0, 1, 0, 1]), target) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="must be \\(N, C\\) logits"):
        accuracy(torch.zeros(3, 2), target)
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0, 2), torch.zeros(0).long())


def test_plots_return_figures():
    fig = show_images(torch.rand(5, 3, 8, 8), titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6
    assert len(show_images(torch.rand(1, 8, 8)).axes) == 1  # one grayscale image
    history = History(step_loss=[3.0, 2.0, 1.0, 0.5], train_loss=[2.5, 0.75], val_loss=[2.0, 1.0],
                      val_metrics={"acc": [0.5, 0.9]})
    assert len(plot_history(history).axes) == 2


def test_plots_reject_bad_input():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        show_images(torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        show_images(torch.rand(4, 4))
    with pytest.raises(ValueError, match="one entry per image"):
        show_images(torch.rand(2, 3, 4, 4), titles=["x"])
    with pytest.raises(ValueError, match="History"):
        plot_history({"loss": [1.0]})
