"""mmlearn.claim / mmlearn.glue and the seed offset: what the robustness machinery relies on."""

from __future__ import annotations

import json

import pytest
import torch

import mmlearn
from mmlearn.device import seed_offset


def test_claim_passes_returns_value_and_logs(tmp_path, monkeypatch):
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv("MMLEARN_CLAIMS_LOG", str(log))
    assert mmlearn.claim("acc", torch.tensor(0.93), at_least=0.9).item() == pytest.approx(0.93)
    mmlearn.glue("lr", 0.2, "{:.1f}")
    first, second = map(json.loads, log.read_text().splitlines()[:2])
    assert first["name"] == "acc" and first["ok"] and first["at_least"] == 0.9
    assert first["value"] == pytest.approx(0.93)
    assert second["name"] == "acc"  # the claim also glues its value
    assert json.loads(log.read_text().splitlines()[2])["text"] == "0.2"


def test_claim_failure_says_what_was_measured_and_required(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLEARN_CLAIMS_LOG", str(tmp_path / "c.jsonl"))
    with pytest.raises(AssertionError, match=r"measured 0\.886, required >= 0\.95"):
        mmlearn.claim("exact", 0.886, at_least=0.95, fmt="{:.3f}")
    with pytest.raises(AssertionError, match=r"<= 0\.1"):
        mmlearn.claim("err", 0.2, at_least=0.0, at_most=0.1)
    assert not json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])["ok"]


@pytest.mark.parametrize("kwargs", [{}, {"at_least": float("nan")}])
def test_claim_needs_a_threshold(kwargs):
    with pytest.raises(ValueError, match="at_least, at_most"):
        mmlearn.claim("x", 1.0, **{k: v for k, v in kwargs.items() if v == v})


@pytest.mark.parametrize("value", [float("nan"), [1, 2], torch.zeros(3)])
def test_claim_rejects_non_numbers(value):
    with pytest.raises(ValueError, match="expected a"):
        mmlearn.claim("x", value, at_least=0.0)


def test_glue_rejects_bad_names():
    with pytest.raises(ValueError, match="glue name"):
        mmlearn.glue("a b", 1.0)


def test_seed_offset_shifts_every_seed(monkeypatch):
    monkeypatch.delenv("MMLEARN_SEED", raising=False)
    assert seed_offset() == 0 and mmlearn.seed_everything(3) == 3
    base = torch.rand(4)
    monkeypatch.setenv("MMLEARN_SEED", "2")
    assert mmlearn.seed_everything(3) == 5
    shifted = torch.rand(4)
    monkeypatch.setenv("MMLEARN_SEED", "0")
    mmlearn.seed_everything(5)
    torch.testing.assert_close(torch.rand(4), shifted)
    assert not torch.equal(base, shifted)


@pytest.mark.parametrize("raw", ["-1", "abc", "1.5"])
def test_seed_offset_rejects_bad_values(monkeypatch, raw):
    monkeypatch.setenv("MMLEARN_SEED", raw)
    with pytest.raises(ValueError, match="MMLEARN_SEED"):
        mmlearn.seed_everything(0)


def test_tf32_is_switched_off_on_cuda(monkeypatch):
    from mmlearn.device import use_full_float32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        monkeypatch.setenv("MMLEARN_TF32", "1")
        use_full_float32()
        assert torch.backends.cudnn.allow_tf32
        monkeypatch.delenv("MMLEARN_TF32")
        use_full_float32()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("value, fmt, shown", [(0.93, "{:.3f}", "0.930"), (135286, "{:,}", "135,286"),
                                               (0.5, "{:.0%}", "50%"), (2.5e-7, "{:.1e}", "2.5e-07")])
def test_glued_text_survives_myst_nb_formatting(value, fmt, shown):
    from myst_nb.core.variables import format_plain_text

    from mmlearn.claims import _Shown

    assert format_plain_text(repr(_Shown(value, fmt)), "") == shown
