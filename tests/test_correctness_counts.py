"""Issue 10 item 9: every loss term divides by the global count of its own rows (DESIGN decision 4).

``ce_on=selected`` with ``pos_rs`` divided the CE sum over the selected rows by the candidate count (pos_rs's
KD normalizer), not by the number of CE rows: 1.017 where the mean over its 8 rows was 3.814. The CE term is
checked here against the float64 mean of −log q(y) over exactly the rows the selection returned, over two
micro-batches (the count is global), for pos_rs and for a count rule.
"""

from __future__ import annotations

import pytest
import torch

from ekd.config import load_config
from ekd.data import collate
from ekd.train import trainer as trainer_mod
from ekd.train.method_parts import MethodParts
from ekd.train.prepare import build_teacher_source, load_student, load_teacher, prepare_data
from ekd.train.trainer import forward_backward
from tiny import tiny_overrides, write_corpus

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("counts")
    corpus = write_corpus(root / "corpus", n_docs=12)
    cfg = load_config(overrides=tiny_overrides(root, corpus))
    return root, corpus, prepare_data(cfg, root / "prep")


@pytest.mark.parametrize(
    "method",
    [
        ["method=pos_rs", "method.scorer=teacher_entropy", "method.select_fraction=0.25"],
        ["method=sekd", "method.select_fraction=0.25"],
    ],
    ids=["pos_rs", "topk"],
)
def test_ce_on_selected_is_the_mean_over_the_selected_rows(prepared, method, monkeypatch):
    root, corpus, data = prepared
    cfg = load_config(
        overrides=tiny_overrides(root, corpus) + [*method, "method.ce_on=selected", "method.ce_weight=1.0"]
    )
    torch.manual_seed(0)
    student = load_student(cfg, data, CPU)
    teacher_model = load_teacher(cfg, data, CPU)
    teacher = build_teacher_source(cfg, data, CPU, teacher_model)
    parts = MethodParts.build(cfg, cfg.train.max_steps)
    micro = [collate(data.blocks["train"], torch.arange(i * 2, i * 2 + 2)) for i in range(2)]
    selections = []
    real = trainer_mod.distill_micro_batch

    def keep_selection(*args, **kwargs):
        out = real(*args, **kwargs)
        selections.append(out.selection)
        return out

    monkeypatch.setattr(trainer_mod, "distill_micro_batch", keep_selection)
    _, sums, kd_count, ce_count, _, _, _ = forward_backward(
        micro, student, teacher, parts, 0, cfg, data.vocab_size, None, root
    )
    # float64 reference: −log q(y) at exactly the rows each selection returned, averaged over all of them
    nll = []
    with torch.no_grad():
        for batch, sel in zip(micro, selections):
            logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logits = logits[..., : data.vocab_size].double().reshape(-1, data.vocab_size)  # (B·T, V)
            log_q = torch.log_softmax(logits[sel.rows], -1)  # (M, V)
            gold = batch.labels.reshape(-1)[sel.rows]
            nll.append(-log_q.gather(-1, gold[:, None]).squeeze(-1))
    nll = torch.cat(nll)
    assert ce_count == nll.numel()  # the global count of CE rows, planned before the forward passes
    assert sums["ce_sum"] / ce_count == pytest.approx(float(nll.mean()), rel=1e-5)
    if method[0] == "method=pos_rs":  # its KD count is the candidate count, which CE used to divide by
        assert kd_count == float(sum((b.labels != -100).sum() for b in micro)) > ce_count


def test_egad_feature_term_is_the_mean_over_its_hard_rows(prepared):
    """The feature term's own rows are the hard rows (top ⌈f·M⌉ of each micro-batch's M selected rows): it is
    divided by their global count, planned before the forward passes, not by the KD count."""
    root, corpus, data = prepared
    cfg = load_config(
        overrides=tiny_overrides(root, corpus) + ["method=egad", "method.feature_hard_fraction=0.3"]
    )
    torch.manual_seed(0)
    student = load_student(cfg, data, CPU)
    teacher_model = load_teacher(cfg, data, CPU)
    teacher = build_teacher_source(cfg, data, CPU, teacher_model)
    parts = MethodParts.build(cfg, cfg.train.max_steps)
    parts.attach_models(student, teacher_model, CPU)
    micro = [collate(data.blocks["train"], torch.arange(i * 2, i * 2 + 2)) for i in range(2)]
    loss, sums, kd_count, _, _, _, _ = forward_backward(
        micro, student, teacher, parts, 0, cfg, data.vocab_size, None, root
    )
    hard, selected = sums["hard"], sums["selected"]
    assert 0 < hard < selected == kd_count  # curriculum: the planned KD count is exact
    expected = sums["kd_sum"] / kd_count + cfg.method.feature_weight * sums["feature_sum"] / hard
    assert loss == pytest.approx(expected, rel=1e-6)
