"""Work shared by the ranks (``ekd.train.rank_work``, ``evaluate(rank=, world_size=)``): 2 gloo processes.

- the data is tokenized and packed by rank 0 only; rank 1 receives the same blocks;
- TopSmp: each rank scores half of the blocks; the gathered scores and the selection equal one process's;
- evaluation: each rank evaluates half of the batches; the all-reduced metrics equal one process's;
- hub downloads: local rank 0 of a node downloads, presets and local directories are never downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dist_runs import assert_groups_ended, free_port
from tiny import tiny_overrides, write_corpus

CPU = torch.device("cpu")


def _setup(root: Path):
    from ekd.config import load_config

    corpus = root / "corpus"
    cfg = load_config(overrides=tiny_overrides(root, corpus, "shared", **{"data.max_eval_blocks": 0}))
    return cfg, root / "run"


def _evaluate(cfg, data, rank: int = 0, world: int = 1):
    from ekd.data import iter_eval
    from ekd.eval import evaluate
    from ekd.train.prepare import load_student, load_teacher

    student, teacher = load_student(cfg, data, CPU), load_teacher(cfg, data, CPU)
    batches = list(iter_eval(data.blocks["eval"], 2))  # 17 batches: 9 on rank 0, 8 on rank 1
    metrics, bins = evaluate(
        student, batches, teacher, vocab_size=data.vocab_size, rank=rank, world_size=world
    )
    return metrics, bins


def _scores(cfg, data, ranks):
    from ekd.train.prepare import load_student, load_teacher
    from ekd.train.rank_work import sharded_sample_scores

    student, teacher = load_student(cfg, data, CPU), load_teacher(cfg, data, CPU)
    return sharded_sample_scores(
        student, data.blocks["train"], "forward_kl", data.vocab_size, ranks, teacher, batch_size=3
    )


def _worker(rank: int, root: str, port: int) -> None:
    import ekd.data
    import ekd.train.prepare as prepare_mod
    from ekd.selection.sample_selection import select_samples
    from ekd.train.distributed import distributed
    from ekd.train.rank_work import fetch_models_once, prepare_data_once

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    calls = {"load_splits": 0, "pack": 0, "download": []}
    real_load, real_pack = ekd.data.load_splits, prepare_mod.pack_run_splits

    def load_splits(*a, **k):
        calls["load_splits"] += 1
        return real_load(*a, **k)

    def pack(*a, **k):
        calls["pack"] += 1
        return real_pack(*a, **k)

    ekd.data.load_splits, prepare_mod.pack_run_splits = load_splits, pack
    import huggingface_hub

    huggingface_hub.snapshot_download = lambda repo, **k: calls["download"].append(f"{repo}@{k['revision']}")
    cfg, run_dir = _setup(Path(root))
    run_dir.mkdir(exist_ok=True)
    with distributed(CPU) as ranks:
        data = prepare_data_once(cfg, run_dir, ranks)
        ids, scores = _scores(cfg, data, ranks)
        metrics, bins = _evaluate(cfg, data, ranks.rank, ranks.world_size)
        specs = ["preset:llama-micro", str(run_dir), "org/model-a", "org/model-a", "org/model-b"]
        models = [(spec, "") for spec in specs] + [("org/model-a", "v2")]  # a teacher pinned apart
        fetch_models_once(models, ranks)  # one node: local rank 0 downloads
        calls["one_node"], calls["download"] = calls["download"], []
        fetch_models_once(models, replace(ranks, local_rank=0))  # two nodes of one rank each
    assert_groups_ended()  # distributed() ended its groups (default and host)
    out = {
        "calls": calls,
        "fingerprint": data.blocks["train"].fingerprint(),
        "vocab": data.vocab_size,
        "ids": ids.tolist(),
        "scores": scores.tolist(),
        "kept": select_samples(scores, ids, 0.4).tolist(),
        "metrics": metrics,
        "bins": bins,
    }
    Path(root, f"rank{rank}.json").write_text(json.dumps(out))


@pytest.mark.slow
def test_two_ranks_share_data_scoring_and_evaluation(tmp_path):
    import torch.multiprocessing as mp

    from ekd.data import iter_eval
    from ekd.selection.sample_selection import score_samples_by_id, select_samples
    from ekd.train.prepare import load_student, load_teacher, prepare_data

    write_corpus(tmp_path / "corpus", n_docs=16)
    mp.spawn(_worker, args=(str(tmp_path), free_port()), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # tokenized and packed once, by rank 0; rank 1 holds the same blocks
    assert (r0["calls"]["load_splits"], r0["calls"]["pack"]) == (1, 1)
    assert (r1["calls"]["load_splits"], r1["calls"]["pack"]) == (0, 0)
    assert r0["fingerprint"] == r1["fingerprint"] and r0["vocab"] == r1["vocab"]
    # one process, same data (the BPE tokenizer rank 0 saved in the run directory)
    cfg, run_dir = _setup(tmp_path)
    data = prepare_data(cfg, run_dir)
    assert data.blocks["train"].fingerprint() == r0["fingerprint"]
    student, teacher = load_student(cfg, data, CPU), load_teacher(cfg, data, CPU)
    batches = iter_eval(data.blocks["train"], 4)
    ids, scores = score_samples_by_id(student, batches, "forward_kl", data.vocab_size, CPU, teacher)
    for r in (r0, r1):
        assert r["ids"] == ids.tolist() == list(range(len(data.blocks["train"])))
        torch.testing.assert_close(torch.tensor(r["scores"]), scores, rtol=1e-5, atol=1e-6)
        assert r["kept"] == select_samples(scores, ids, 0.4).tolist()
    # evaluation split over the ranks equals one process's
    want, want_bins = _evaluate(cfg, data)
    assert want["tokens"] > 0 and "kl" in want
    for r in (r0, r1):
        assert r["metrics"].keys() == want.keys()
        for k, v in want.items():
            assert r["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-9, nan_ok=True), k
        assert [b[2] for b in r["bins"]] == [b[2] for b in want_bins]
    # hub models: one download per node, never for presets or local directories
    fetched = ["org/model-a@None", "org/model-b@None", "org/model-a@v2"]  # each hub id at its own revision
    assert r0["calls"]["one_node"] == fetched and r1["calls"]["one_node"] == []
    assert r0["calls"]["download"] == r1["calls"]["download"] == fetched


def test_a_mixture_of_experts_student_is_told_by_its_config_or_its_modules():
    """Review 126, S1: a DBRX student (its expert count in ``ffn_config.moe_num_experts``) was not told a mixture of
    experts, so DDP ran without ``find_unused_parameters`` and a micro-batch routing no token to an expert failed."""
    from types import SimpleNamespace

    from torch import nn
    from transformers import DbrxConfig, LlamaConfig, LlamaForCausalLM

    from ekd.train.distributed import routes_tokens

    dense = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
        )
    )
    assert not routes_tokens(dense)

    class Block(nn.Module):
        def __init__(self, config, inner):
            super().__init__()
            self.config, self.inner = config, inner

    assert routes_tokens(Block(DbrxConfig(ffn_config={"moe_num_experts": 4}), nn.Linear(2, 2)))

    class SparseMoeBlock(nn.Module):
        pass

    assert routes_tokens(Block(SimpleNamespace(), SparseMoeBlock()))  # a config that counts none its own way


def test_distill_and_cache_check_what_their_ranks_share(tmp_path, monkeypatch):
    """Review 156, R18: the several-nodes checks are tested with 2 gloo ranks directly; here, that `ekd distill` and
    `ekd cache` make them, on the directories and models the ranks share (deleting a call fails this test)."""
    from ekd.cli import main
    from ekd.train import rank_work, trainer

    calls = []

    def spy(name):
        def record(ranks, *args, **kwargs):
            calls.append((name, *[str(a) for a in args[:3]]))

        return record

    for module in (trainer, rank_work):  # the trainer's own names; ekd cache imports rank_work's at its call
        for name in ("check_shared_directory", "check_shared_store", "check_same_weights"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, spy(name))
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    base = tiny_overrides(tmp_path, corpus, "shared", **{"train.max_steps": 1})
    assert main(["distill", *base, f"data.store_dir={tmp_path / 'store'}", "model.lora_r=2"]) == 0
    run_dir = str(tmp_path / "runs" / "shared")
    assert ("check_shared_directory", run_dir, "run.output_dir") in [c[:3] for c in calls], calls
    assert ("check_shared_store", str(tmp_path / "store")) in [c[:2] for c in calls], calls
    assert any(c[0] == "check_same_weights" and c[3] == "model.student" for c in calls), (
        calls
    )  # the LoRA base
    calls.clear()
    cache = str(tmp_path / "cache")
    assert main(["cache", *base, f"teacher.cache_dir={cache}", "method=rskd"]) == 0
    assert ("check_shared_directory", cache, "teacher.cache_dir") in [c[:3] for c in calls], calls
    assert any(c[0] == "check_same_weights" for c in calls), calls
