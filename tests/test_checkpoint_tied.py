"""Checkpoints of modules holding tied (shared) tensors — the EMA copy and the frozen initial student of a
tied-embedding student — save, load back exactly and stay tied (safetensors refuses shared memory as is)."""

from __future__ import annotations

import copy

import pytest
import torch

from ekd.models.load import build_preset
from ekd.train.checkpoint import load_checkpoint, save_checkpoint, unshared_tensors


def _tied():
    model = build_preset("llama-micro-tied", 50, 0, seed=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def test_unshared_tensors_drops_aliases_and_clones_overlaps():
    model = _tied()
    base = torch.arange(12.0)
    state = {**model.state_dict(), "view.a": base[:6], "view.b": base[4:10]}
    tensors, aliases = unshared_tensors(state)
    assert aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert set(tensors) | set(aliases) == set(state)
    assert tensors["view.b"].untyped_storage().data_ptr() != tensors["view.a"].untyped_storage().data_ptr()
    for name, t in state.items():
        torch.testing.assert_close(tensors[aliases.get(name, name)], t, rtol=0, atol=0)


@pytest.mark.parametrize("keys", [("ema_student",), ("initial_student",)])
def test_checkpoint_with_tied_extra_modules_round_trips(tmp_path, keys):
    student = _tied()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    extra = {k: copy.deepcopy(student).requires_grad_(False) for k in keys}
    with torch.no_grad():
        for mod in extra.values():
            mod.model.embed_tokens.weight.add_(1.0)  # differs from the student, still tied
    save_checkpoint(
        tmp_path, 3, student, optimizer, {"step": 3, "loader": {}, "policy": {}, "rng": {}}, extra
    )

    fresh_student = _tied()
    fresh_extra = {k: _tied() for k in keys}
    state = load_checkpoint(
        tmp_path / "checkpoints" / "step-000003",
        fresh_student,
        torch.optim.AdamW(fresh_student.parameters(), lr=1e-3),
        fresh_extra,
    )
    assert state["step"] == 3
    for k in keys:
        got, want = fresh_extra[k], extra[k]
        assert got.lm_head.weight is got.model.embed_tokens.weight
        for (name, a), b in zip(got.state_dict().items(), want.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
