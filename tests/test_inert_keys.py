"""Method keys a run sets that its method never reads (try-out 53, F5: ``method=egad method.kd_temperature=3``
trained at EGAD's entropy-mapped τ without a word): refused at a start, warned about on a resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ekd.config import load_config
from ekd.config.inert import READ_WHEN, inert_keys
from ekd.methods import presets
from ekd.selection.policies import policies
from ekd.temperature import temperatures
from hostile import cli, one_error_line
from tiny import config_file, write_corpus


class _Reads:
    """A method config that records every key read from it."""

    def __init__(self, method_cfg):
        self._cfg, self.read = method_cfg, set()

    def __getattr__(self, key):
        self.read.add(key)
        return getattr(self._cfg, key)


def _built(registry, name: str, **overrides) -> tuple[set[str], object]:
    """The keys the ``name`` entry of ``registry`` reads as it is built, and the config it was built from (the
    bandit with ``bandit_kind=exp3`` is EXP3, which ``build_policy`` builds in LinUCB's place)."""
    from ekd.selection.bandit import Exp3Budget

    over = [f"method.{k}={v}" for k, v in overrides.items()]
    cfg = load_config(None, over).method
    reads = _Reads(cfg)
    build = Exp3Budget if overrides.get("bandit_kind") == "exp3" else registry.get(name)
    try:
        build(reads, total_steps=10)
    except TypeError:
        build(reads)
    return reads.read, cfg


@pytest.mark.parametrize(
    "registry, key, names",
    [
        (policies, "policy", [*policies.names(), "bandit:exp3"]),
        (temperatures, "temperature", temperatures.names()),
    ],
    ids=["policies", "temperatures"],
)
def test_the_table_says_what_each_policy_and_temperature_reads(registry, key, names):
    """READ_WHEN agrees with the code: every registered policy and temperature, built from a config that records
    reads, reads exactly the keys the table says are read under it (among the keys any of them reads)."""
    built = {}
    for entry in names:
        name, _, kind = entry.partition(":")
        extra = {"bandit_kind": kind} if kind else {}
        if registry is policies and name != "all":
            extra["scorer"] = "student_entropy"  # every policy but 'all' ranks positions by a score
        built[entry] = _built(registry, name, **{key: name}, **extra)
    group = set().union(*(read for read, _ in built.values())) & set(READ_WHEN)
    assert group, "no key of the table is read by any entry"
    for entry, (read, cfg) in built.items():
        said = {k for k in group if READ_WHEN[k].reads(cfg)}
        assert read & group == said, (entry, sorted(read & group), sorted(said))


def test_no_preset_sets_a_key_it_does_not_read():
    for name in presets.names():
        assert inert_keys(load_config(None, [f"method={name}"]).method) == [], name


@pytest.mark.parametrize(
    "overrides, named",
    [
        (
            ["method=egad", "method.kd_temperature=3"],
            "method.kd_temperature=3.0 is read only under method.temperature",
        ),
        (["method=kd", "method.rs_samples=7"], "method.rs_samples=7 is read only under method.target=rs"),
        (
            ["method=kd", "method.idts_strength=2"],
            "method.idts_strength=2.0 is read only under method.temperature=idts",
        ),
        (
            ["method=kd", "method.jsd_beta=0.9"],
            "method.jsd_beta=0.9 is read only under method.divergence=jsd",
        ),
        (
            ["method=sekd", "method.gls_queue_size=10"],
            "method.gls_queue_size=10 is read only under method.policy=gls",
        ),
        (
            ["method=kd", "method.ce_on=selected"],
            "method.ce_on=selected is read only with method.ce_weight > 0",
        ),
    ],
)
def test_a_key_the_method_never_reads_is_refused_at_a_start(tmp_path, capsys, monkeypatch, overrides, named):
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "inert", **{"train.max_steps": 1})
    line = one_error_line(*cli(capsys, "distill", config, *overrides)[::2])
    assert named in line and "no effect on this run" in line and line.endswith("or choose what reads it"), (
        line
    )
    assert not Path("runs").exists() or not any(Path("runs").iterdir())


@pytest.mark.parametrize(
    "overrides, named",
    [
        (
            ["method=kd", "method.ema_decay=0.5"],
            "method.ema_decay=0.5 is read only under method.objective=ema_self",
        ),
        (["method=kd", "method.uncertainty_weight=3"], "method.uncertainty_weight=3.0 is read only under"),
        (
            ["method=kd", "method.scorer=student_entropy"],
            "method.scorer=student_entropy is read only under a ",
        ),
        (
            ["method=dkd", "method.target=rs", "method.rs_samples=7"],
            "method.target=rs is read only with method.",
        ),
        (
            ["method=atkd", "method.target=topk", "method.topk=2"],
            "method.topk=2 is read only under method.target",
        ),
        (["method=uncertainty", "method.kd_temperature=3"], "method.kd_temperature=3.0 is read only under"),
        (["method=ce", "method.kd_temperature=3"], "with a per-token term that takes τ"),
        (
            ["method=ce", "method.policy=topk", "method.scorer=student_entropy"],
            "method.policy=topk is read only",
        ),
        (
            ["method=ema_self_distill", "method.kd_weight=2"],
            "method.kd_weight=2.0 is read only under method.",
        ),
    ],
)
def test_a_component_that_does_not_run_reads_none_of_its_keys(overrides, named):
    """Try-out 54, F1: the rules looked only at a component's own switch: under dkd/atkd/self-distillation the
    target is never read, under `ce` (no KD term) no KD knob is, the uncertainty objective takes no τ, and the
    EMA/uncertainty knobs belong to their objectives."""
    from ekd.config.inert import inert_message

    message = inert_message(load_config(None, overrides).method)
    assert named in message, message


def test_the_scorer_is_read_where_the_policy_needs_scores():
    from ekd.selection.bandit import Exp3Budget

    for entry in [*policies.names(), "bandit:exp3"]:
        name, _, kind = entry.partition(":")
        cfg = load_config(None, [f"method.policy={name}", f"method.bandit_kind={kind or 'linucb'}",
                                 *([] if name == "all" else ["method.scorer=student_entropy"])]).method  # fmt: skip
        needs = (Exp3Budget if kind == "exp3" else policies.get(name)).needs_scores
        assert READ_WHEN["scorer"].reads(cfg) == needs, entry


def test_a_select_fraction_the_bandit_clamps_is_refused_unless_its_range_holds_it():
    """Try-out 54, F3: `method=bandit method.select_fraction=0.5` trained at the preset's bandit_max_fraction=0.2
    (LinUCB clamps its target to [min, max]) without a word."""
    from ekd.config.inert import inert_message

    message = inert_message(load_config(None, ["method=bandit", "method.select_fraction=0.5"]).method)
    assert (
        "method.select_fraction=0.5 is clamped by LinUCB's bandit to method.bandit_max_fraction=0.2"
        in message
    )
    for overrides in (["method=bandit", "method.select_fraction=0.5", "method.bandit_max_fraction=0.6"],
                      ["method=bandit", "method.select_fraction=0.1"], ["method=bandit"]):  # fmt: skip
        assert inert_message(load_config(None, overrides).method) == "", overrides


def test_the_self_distilling_objectives_are_the_trainers():
    from ekd.config.inert import SELF_OBJECTIVES
    from ekd.train.method_parts import SELF_OBJECTIVES as trainers

    assert trainers == SELF_OBJECTIVES


def test_keys_set_to_the_presets_value_or_read_by_the_method_pass():
    for overrides in (
        ["method=kd", "method.rs_samples=50"],  # the default: nothing was set
        ["method=egad", "method.entropy_tau_max=3"],
        ["method=adakd", "method.kd_temperature=2"],  # IDTS's τ_base
        ["method=rskd", "method.rs_samples=7"],
        ["method=kd", "method.temperature=schedule", "method.temperature_end=2"],
        ["method=dkd", "method.kd_temperature=2", "method.dkd_beta=4"],  # DKD takes τ
        ["method=ema_self_distill", "method.ema_decay=0.9", "method.kd_temperature=2"],
        ["method=uncertainty", "method.uncertainty_fraction=0.3"],
        ["method=sekd", "method.scorer=teacher_entropy"],
        ["method=ce", "method.ce_weight=2"],
    ):
        assert inert_keys(load_config(None, overrides).method) == [], overrides


def test_several_inert_keys_are_named_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "inert", **{"train.max_steps": 1})
    line = one_error_line(
        *cli(capsys, "distill", config, "method=kd", "method.topk=5", "method.bucket_low=10")[::2]
    )
    assert (
        "method.topk=5 is read only under method.target=topk with method.objective=kd and method.kd_weight > 0; "
        in line
    )
    assert "method.bucket_low=10.0 is read only under method.policy=bucket with a per-token KD term" in line
    assert "they have no effect on this run" in line and line.endswith("or choose what reads them"), line


def test_a_cache_build_refuses_an_inert_key(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "inert", **{"train.max_steps": 1})
    line = one_error_line(
        *cli(capsys, "cache", config, "method=rskd", "method.topk=5", "teacher.cache_dir=cache")[::2]
    )
    assert "method.topk=5 is read only under method.target=topk" in line, line
    assert not Path("cache").exists()


def test_a_resumed_run_with_an_inert_key_is_warned_about_and_trains_on(tmp_path, capsys, monkeypatch, caplog):
    """A run saved before this check may hold an inert key: its resume is not refused (it trains on as it began)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=12)
    config = config_file(Path("."), Path("corpus"), "old", **{"train.max_steps": 1, "method.preset": "kd"})
    assert cli(capsys, "distill", config)[0] == 0
    saved = Path("runs", "old", "config.yaml")
    raw = yaml.safe_load(saved.read_text())
    raw["method"]["rs_samples"] = 7  # as an older ekd let it be saved
    saved.write_text(yaml.safe_dump(raw))
    with caplog.at_level(logging.WARNING, logger="ekd"):
        rc, out, err = cli(capsys, "distill", saved, "train.max_steps=2", "--resume")
    assert rc == 0, err
    said = [r.getMessage() for r in caplog.records if "no effect on this run" in r.getMessage()]
    assert len(said) == 1 and "method.rs_samples=7 is read only under method.target=rs" in said[0], said
    # try-out 54, F5: 'drop it' was advice a resume refuses (another run): the resumed run keeps its settings
    assert said[0].endswith("the resumed run keeps its saved settings and trains on as it began"), said[0]


def test_a_cache_fraction_no_cache_reads_is_refused_and_cache_keys_of_an_online_run_are_said(
    tmp_path, capsys, monkeypatch, caplog
):
    """Try-out 54, F8: `teacher.cache_fraction=0.5` with teacher.cache_positions=all built a cache (and trained an
    online run) without a word; an online run's teacher.cache_* keys are read by nothing."""
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "frac", **{"train.max_steps": 1})
    for command in (["cache", config, "method=rskd", "teacher.cache_dir=cache"], ["distill", config]):
        line = one_error_line(*cli(capsys, *command, "teacher.cache_fraction=0.5")[::2])
        assert (
            "teacher.cache_fraction=0.5 is read only under teacher.cache_positions=teacher_entropy_topk"
            in line
        ), line
        assert line.endswith("drop it, or set teacher.cache_positions=teacher_entropy_topk"), line
    assert not Path("cache").exists() and not Path("runs", "frac").exists()
    with caplog.at_level(logging.WARNING, logger="ekd.train.trainer"):
        rc, _, _ = cli(capsys, "distill", config, "teacher.cache_dir=cache", "teacher.cache_stat_format=fp16")
    assert rc == 0
    said = [r.getMessage() for r in caplog.records if "configure a teacher cache" in r.getMessage()]
    assert said == [
        f"teacher.cache_dir={tmp_path / 'cache'}, teacher.cache_stat_format=fp16 configure a teacher cache (ekd cache, "
        "teacher.source=cache); this run's teacher.source=online reads none of them (set teacher.source=cache "
        "to train from that cache)"
    ]


def test_cache_keys_a_run_reads_are_not_said():
    from ekd.config.inert import inert_cache_fraction, unread_cache_keys

    def teacher(*overrides):
        return load_config(None, list(overrides)).teacher

    topk = ("teacher.cache_positions=teacher_entropy_topk", "teacher.cache_fraction=0.5")
    assert inert_cache_fraction(teacher(*topk)) == ""
    assert (
        unread_cache_keys(teacher(*topk, "teacher.source=cache", "teacher.cache_dir=c", "method=rskd")) == ""
    )
    assert unread_cache_keys(teacher("teacher.source=online")) == ""  # nothing set
    assert unread_cache_keys(teacher(*topk)).startswith(
        "teacher.cache_positions=teacher_entropy_topk, teacher.cache_fraction=0.5 configure a teacher cache"
    )


def test_a_temperature_end_behind_a_hold_over_the_whole_run_is_said():
    """Try-out 58, F3: `method.temperature=schedule` with `temperature_hold_fraction=1` holds τ0 for every step,
    so a `temperature_end` set beside it has no effect — said at the start (a sweep over the hold may reach 1:
    review of session 32), not refused."""
    from ekd.config.inert import idle_keys, idle_schedules, inert_message

    schedule = ["method=sekd", "method.temperature=schedule", "method.kd_temperature=2"]
    held = load_config(
        None, [*schedule, "method.temperature_end=3", "method.temperature_hold_fraction=1"]
    ).method
    assert inert_message(held) == ""
    assert idle_keys(held) == [
        "method.temperature_end=3.0 has no effect in this run: it acts only with method.temperature_hold_fraction < 1"
    ]
    assert idle_schedules(held, 100) == []  # said once
    moving = [*schedule, "method.temperature_end=3", "method.temperature_hold_fraction=0.5"]
    assert idle_keys(load_config(None, moving).method) == []


def test_schedules_longer_than_the_run_are_said_at_its_start(tmp_path, capsys, monkeypatch, caplog):
    """Try-out 58, F3: a curriculum of 100 steps in a 2-step run (the window moved 1% of its way) and a τ hold
    that outlasts the run (temperature_end never reached) trained without a word: one warning line each."""
    import logging

    from ekd.config.inert import idle_schedules

    egad = load_config(None, ["method=egad", "method.curriculum_steps=100"]).method
    (line,) = idle_schedules(egad, 2)
    # EGAD's curriculum: φ = start + (end − start)·u^power at the last step u = 1/100
    phase = (
        egad.curriculum_start
        + (egad.curriculum_end - egad.curriculum_start) * (1 / 100) ** egad.curriculum_power
    )
    assert line.startswith("method.curriculum_steps=100 is longer than the run (train.max_steps=2)"), line
    assert f"(phase {phase:.3g})" in line, line
    assert idle_schedules(egad, 100) == [] and idle_schedules(egad, 200) == []
    held = [
        "method=sekd",
        "method.temperature=schedule",
        "method.kd_temperature=2",
        "method.temperature_end=3",
    ]
    short = load_config(None, [*held, "method.temperature_hold_fraction=0.9"]).method
    (line,) = idle_schedules(short, 3)  # u = 2/3 ≤ 0.9 at the last step: τ stays 2
    assert line.startswith("method.temperature_end=3.0 never acts in this run"), line
    assert idle_schedules(short, 20) == []  # u = 19/20 > 0.9: τ moves
    # from the CLI: the run trains, and says so once
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "idle", **{"train.max_steps": 2})
    with caplog.at_level(logging.WARNING, logger="ekd"):
        rc, _, err = cli(capsys, "distill", config, "method=egad", "method.curriculum_steps=100")
    assert rc == 0, err
    said = [r.getMessage() for r in caplog.records if "curriculum_steps=100 is longer" in r.getMessage()]
    assert len(said) == 1, said


@pytest.mark.parametrize(
    "overrides, way",
    [
        (["method=ema_self_distill", "method.ce_weight=0"], "set method.ce_weight > 0"),
        (["method=kd", "method.objective=ema_self_distill"], "set method.ce_weight > 0"),
        (["method=uncertainty", "method.uncertainty_fraction=0"], "or method.uncertainty_fraction > 0"),
    ],
)
def test_a_self_distilling_objective_with_nothing_to_move_the_student_is_refused(
    tmp_path, capsys, monkeypatch, overrides, way
):
    """Try-out 60, F3: the only term a KL to the student itself (its EMA, its initial copy) is 0 with a zero gradient
    at the start, and AdamW walked the weights along float rounding (loss 0 → 6e-7 → 1e-3): refused in one line."""
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "selfd", **{"train.max_steps": 1})
    line = one_error_line(*cli(capsys, "distill", config, *overrides)[::2])
    assert "has no term that moves the student" in line and way in line, line
    # with a CE term, or MLE tokens, the objective regularizes a student that moves: accepted
    from ekd.config.inert import idle_objective

    assert idle_objective(load_config(None, ["method=ema_self_distill"]).method) == ""
    with_ce = ["method=uncertainty", "method.uncertainty_fraction=0", "method.ce_weight=0.5"]
    assert idle_objective(load_config(None, with_ce).method) == ""
    assert idle_objective(load_config(None, ["method=uncertainty"]).method) == ""
    # a config still loads (a unit of the loss may isolate the KL term); the run start refuses it
    assert idle_objective(load_config(None, overrides).method)


@pytest.mark.parametrize(
    "source, overrides, named",
    [
        (
            "rows.jsonl",
            ["data.hf_split=validation"],
            "data.hf_split='validation' is read only from hf: sources",
        ),
        (
            "corpus",
            ["data.text_field=body"],
            "data.text_field='body' is read only from JSONL, Parquet or hf: rows",
        ),
        (
            "rows.jsonl",
            ["data.messages_field=conv"],
            "data.messages_field='conv' is read only from chat rows",
        ),
        (
            "chat.jsonl",
            ["data.format=chat", "data.text_field=body"],
            "data.text_field='body' is read only from",
        ),
    ],
    ids=[
        "hf-split-of-jsonl",
        "text-field-of-a-directory",
        "messages-field-without-chat",
        "text-field-of-chat",
    ],
)
def test_a_data_key_no_source_reads_is_refused_at_a_start(
    tmp_path, capsys, monkeypatch, source, overrides, named
):
    """Try-out 74, F10: data keys the run's sources never read were accepted in silence (and `--resume` refused
    them as changes of what the run computes); `data.chat_template` without chat was already refused."""
    import json

    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    Path("rows.jsonl").write_text(
        "".join(json.dumps({"text": f"row {i} says hello"}) + "\n" for i in range(8))
    )
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    Path("chat.jsonl").write_text(json.dumps({"messages": chat}) + "\n")
    config = config_file(Path("."), Path("corpus"), "inert", **{"train.max_steps": 1})
    line = one_error_line(*cli(capsys, "distill", config, f"data.source={source}", *overrides)[::2])
    assert (
        named in line and "and this run reads none (data.source " in line and "no effect; unset data." in line
    )
    assert not Path("runs").exists() or not any(Path("runs").iterdir())


def test_a_data_key_some_source_reads_is_accepted():
    """An eval source of another kind reads the key (an hf: set's split), and a glob may hold any kind."""
    from ekd.config.inert import inert_data_keys

    def inert(**data):
        return inert_data_keys(load_config(overrides=[f"data.{k}={v}" for k, v in data.items()]).data)

    assert inert(source="rows.jsonl", hf_split="validation", eval_sources="{e: 'hf:org/set'}") == []
    assert inert(source="rows.jsonl", text_field="body") == []
    assert inert(source="shards/*", text_field="body", hf_split="test") == []
    assert [k for k, _ in inert(source="corpus.txt", text_field="body", hf_split="test")] == [
        "hf_split",
        "text_field",
    ]


def test_a_separator_no_text_source_reads_is_refused_on_chat_data():
    """Try-out 74, F11: data.separator on chat rows packed the same blocks whatever it said."""
    from ekd.config.inert import inert_data_keys

    def inert(**data):
        cfg = load_config(overrides=["data.format=chat", *(f"data.{k}={v}" for k, v in data.items())])
        return [k for k, _ in inert_data_keys(cfg.data)]

    assert inert(source="chat.jsonl", separator="eos") == ["separator"]
    assert (
        inert(source="chat.jsonl", separator="eos", eval_sources="{notes: notes.txt}") == []
    )  # frames the text set
    assert inert(source="chat.jsonl") == []


@pytest.mark.parametrize(
    "overrides, named",
    [
        (
            [
                "method=egad",
                "method.entropy_tau_min=1.5",
                "method.entropy_tau_max=1.5",
                "method.entropy_direction=decreasing",
            ],
            "method.entropy_direction=decreasing has no effect in this run: it acts only with "
            "method.entropy_tau_min ≠ entropy_tau_max",
        ),
        (
            [
                "method=egad",
                "method.curriculum_start=0.5",
                "method.curriculum_end=0.5",
                "method.curriculum_power=2",
            ],
            "method.curriculum_power=2.0 has no effect in this run: it acts only with method.curriculum_start ≠ "
            "curriculum_end",
        ),
        (
            ["method.temperature=schedule", "method.temperature_hold_fraction=0.5"],
            "method.temperature_hold_fraction=0.5 has no effect in this run: it acts only with "
            "method.temperature_end ≠ kd_temperature",
        ),
        (
            ["method=uncertainty", "method.uncertainty_fraction=1", "method.uncertainty_weight=5"],
            "method.uncertainty_weight=5.0 has no effect in this run: it acts only with "
            "method.uncertainty_fraction < 1 (tokens left to self-distill)",
        ),
        (
            ["method.feature_weight=1", "method.feature_hard_fraction=0"],
            "method.feature_weight=1.0 has no effect in this run: it acts only with method.feature_hard_fraction > 0 "
            "(hard tokens)",
        ),
        (  # try-out 125, F4: the preset's feature weight, left without a hard token by the key the run set
            ["method=egad", "method.feature_hard_fraction=0"],
            "method.feature_hard_fraction=0.0 leaves method.feature_weight=0.1 without effect in this run: it acts "
            "only with method.feature_hard_fraction > 0 (hard tokens)",
        ),
    ],
    ids=[
        "direction-of-one-tau",
        "power-of-a-fixed-phase",
        "hold-between-equal-taus",
        "weight-of-no-self-distilled-token",
        "features-of-no-hard-token",
        "egad-without-hard-tokens",
    ],
)
def test_a_key_other_values_leave_without_effect_is_said(overrides, named):
    """Try-out 73, F2: a τ range of one value, or a curriculum that starts where it ends, ran in silence with a
    direction or a power that changes nothing (as `temperature_end` behind a full hold); try-out 108, F9: a τ
    schedule between equal τs, the uncertainty objective's weight with ρ = 1 (losses identical at every step),
    the feature branch with no hard token (its loss 0 at every step). Said at the start, not refused: one YAML of
    a sweep may reach such a point of its grid (review of session 32)."""
    from ekd.config.inert import idle_keys, inert_message

    method = load_config(overrides=overrides).method
    assert inert_message(method) == ""
    assert [named] == idle_keys(method)


def test_a_save_to_disk_directory_reads_no_dataset_name_or_streaming(tmp_path):
    """Try-out 76, F1: hf:<save_to_disk directory> with data.hf_name or data.hf_streaming=true trained on the whole
    directory in silence (load_from_disk reads neither); its rows still read data.text_field."""
    import datasets

    from ekd.config.inert import inert_data_keys

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"body": "a row"}]).save_to_disk(str(saved))

    def inert(**data):
        return [
            k
            for k, _ in inert_data_keys(
                load_config(overrides=[f"data.{k}={v}" for k, v in data.items()]).data
            )
        ]

    assert inert(source=f"hf:{saved}", hf_name="foo", hf_streaming="true", text_field="body") == [
        "hf_name",
        "hf_streaming",
    ]
    assert inert(source="hf:org/set", hf_name="foo", hf_streaming="true") == []  # a hub dataset reads them


@pytest.mark.parametrize(
    "overrides, named",
    [
        (
            ["model.lora_alpha=32", "model.lora_target_modules=[q_proj]"],
            "model.lora_alpha=32.0 is read only with model.lora_r > 0 (a LoRA student); "
            "model.lora_target_modules=['q_proj'] is read only with model.lora_r > 0",
        ),
        (["eval.tasks_limit=5"], "eval.tasks_limit=5 is read only with eval.tasks"),
        (["eval.tasks_dir=/nonexistent"], "eval.tasks_dir=/nonexistent is read only with eval.tasks"),
        (
            ["train.compile=true", "train.loss_path=reference"],
            "train.compile=True is read only under train.loss_path",
        ),
        (
            ["eval.teacher=false", "eval.entropy_buckets=8"],
            "eval.entropy_buckets=8 is read only when evaluation scores beside a teacher",
        ),
        (  # try-out 108, F7
            ["method=ce", "model.teacher_dtype=float32"],
            "model.teacher_dtype=float32 is read only when the run loads a teacher model",
        ),
        (
            ["method=ce", "model.revision=main"],
            "model.revision=main is read only when a model or the tokenizer is a hub id, or the run loads a teacher",
        ),
    ],
    ids=[
        "lora-without-lora",
        "tasks-limit-without-tasks",
        "tasks-dir-without-tasks",
        "compile",
        "buckets",
        "teacher-dtype-without-teacher",
        "revision-of-presets",
    ],
)
def test_a_run_key_the_run_never_reads_is_said_at_its_start(
    tmp_path, capsys, monkeypatch, caplog, overrides, named
):
    """Try-out 108, F3–F6: LoRA knobs without a LoRA student (a full fine-tune with no word), task settings
    without a task (eval.tasks_dir failed only after training), torch.compile on a loss path it does not compile,
    teacher-entropy buckets without the teacher at evaluation. Said, not refused: a sweep's shared YAML holds
    them for the grid points that read them (try-out 110, F7: `lora_alpha: 32` at `lora_r=0`)."""
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "inert", **{"train.max_steps": 1})
    with caplog.at_level(logging.WARNING, logger="ekd"):
        code, _, err = cli(capsys, "distill", config, *overrides)
    assert code == 0, err
    assert named in caplog.text and "no effect on this run" in caplog.text, caplog.text


def test_run_keys_the_run_reads_pass():
    from ekd.config.inert import inert_run_keys

    def inert(*overrides):
        return [k for k, _, _ in inert_run_keys(load_config(overrides=list(overrides)))]

    assert inert("model.lora_r=8", "model.lora_alpha=32") == []
    assert inert("eval.tasks=[arc_easy]", "eval.tasks_limit=5") == []
    assert inert("train.compile=true") == []  # the chunked path, the default
    assert inert("eval.entropy_buckets=8") == []
    assert inert("eval.teacher=false", "eval.entropy_buckets=0") == []  # turned off: nothing lost (review)
    assert inert("eval.tasks_teacher=false") == []
    # try-out 108, F7: what reads the model keys
    assert inert("model.teacher_dtype=float32") == []  # kd trains from its teacher
    assert (
        inert("method=ce", "model.teacher_dtype=float32", "model.teacher=/tmp") == []
    )  # evaluated beside it
    assert (
        inert("method=ce", "model.teacher_dtype=float32", "eval.tasks=[x]", "eval.tasks_teacher=true") == []
    )
    assert inert("model.revision=main", "model.student=org/name") == []
    # review of session 33, F1: a teacher's figures record its revision, a preset's too (eval.json, ekd compare)
    assert inert("model.revision=main") == []
    assert inert("method=ce", "model.revision=main") == ["model.revision"]
    assert inert("model.revision=main", "model.tokenizer=org/tok") == []
    # model.teacher_revision: the teacher's alone, read of a hub teacher (try-out 152, F4)
    # a preset teacher loaded: its figures record it (review 161, R2)
    assert inert("model.teacher_revision=v1") == []
    assert inert("model.teacher_revision=v1", "method=ce", "eval.teacher=false") == ["model.teacher_revision"]
    assert inert("model.teacher_revision=v1", "model.teacher=org/t") == []
    assert (
        inert("model.teacher_revision=v1", "model.teacher=org/t", "method=ce") == []
    )  # evaluated, tokenizer
    alone = ("method=ce", "eval.teacher=false", "model.tokenizer=student", "model.student=org/s")
    assert inert("model.teacher_revision=v1", "model.teacher=org/t", *alone) == ["model.teacher_revision"]
    # the tokenizer named by the teacher's hub id is read at the teacher's revision (review 161, R8)
    by_id = ("method=ce", "eval.teacher=false", "model.tokenizer=org/t", "model.student=org/s")
    assert inert("model.teacher_revision=v1", "model.teacher=org/t", *by_id) == []
    # the teacher pinned apart: model.revision reads a hub student or tokenizer only
    pinned = ("model.teacher=org/t", "model.teacher_revision=v1", "model.revision=v2")
    assert inert(*pinned) == ["model.revision"]
    assert inert(*pinned, "model.student=org/s") == []
    assert inert("model.bpe_vocab_size=512") == []  # preset models: the BPE is trained
    assert inert("model.bpe_vocab_size=512", "model.tokenizer=/tmp") == ["model.bpe_vocab_size"]
    assert inert("model.bpe_vocab_size=512", "model.teacher=/tmp") == ["model.bpe_vocab_size"]


def test_eval_keys_of_a_run_without_an_eval_set_are_said():
    """Try-out 108, F5: `eval.every=1` with no eval set evaluated nothing, without a word (said, not refused: one
    YAML may serve runs with and without a set)."""
    from ekd.config.inert import unread_eval_keys

    def said(*overrides):
        return unread_eval_keys(load_config(overrides=list(overrides)))

    line = said("data.source=c.txt", "data.eval_fraction=0", "eval.every=1", "data.max_eval_blocks=3")
    assert line.startswith(
        "eval.every=1, data.max_eval_blocks=3 configure evaluation, but this run has no eval"
    )
    assert said("data.source=pystdlib", "data.eval_fraction=0", "eval.every=5") == ""  # its shifted sets
    assert (
        said("data.source=c.txt", "data.eval_fraction=0", "data.eval_sources={e: e.txt}", "eval.every=5")
        == ""
    )
    assert said("data.source=c.txt", "data.eval_fraction=0") == ""
    advised = line.split("name one with ")[1].split(" or ")[
        0
    ]  # try-out 112, F2: it named the reserved 'eval'
    load_config(overrides=["data.source=c.txt", advised.replace("FILE", "e.txt")])
    assert said("data.source=c.txt", "data.eval_fraction=0", "eval.entropy_buckets=0") == ""  # off
    assert said(
        "data.source=pystdlib:train", "data.eval_fraction=0", "eval.every=5"
    )  # one split: no shifted sets


def test_a_resume_that_changes_a_key_neither_run_reads_goes_on(tmp_path, capsys, monkeypatch, caplog):
    """Try-out 112, F1: `--resume` refused a changed `model.lora_alpha` (no LoRA student either time) as changing
    "what the run computes", right after the warning that it has no effect; a key one of them reads still blocks."""
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "unread", **{"train.max_steps": 1})
    assert cli(capsys, "distill", config, "model.lora_alpha=32")[0] == 0
    with caplog.at_level(
        logging.INFO, logger="ekd"
    ):  # a rerun without --resume: no --resume line (try-out 113)
        line = one_error_line(
            *cli(capsys, "distill", config, "train.max_steps=2", "model.lora_alpha=64")[::2]
        )
    assert "--resume:" not in caplog.text
    # try-out 113, F2: not "a different run" for a key neither config reads
    assert (
        "already holds a different run (differs in train.max_steps; also in model.lora_alpha, which neither"
        " config reads)" in line
    ), line
    line = one_error_line(*cli(capsys, "distill", config, "model.lora_alpha=64")[::2])
    assert (
        "already holds a run (differing in model.lora_alpha, which neither config reads), finished" in line
    ), line
    # try-out 116, F8 (d): a key --resume cannot change named the unread ones nowhere
    line = one_error_line(*cli(capsys, "distill", config, "model.lora_alpha=64", "train.lr=0.002")[::2])
    assert (
        "(differs in train.lr, which --resume cannot change; also in model.lora_alpha, which neither config reads)"
        in line
    ), line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ekd"):
        code, _, err = cli(capsys, "distill", config, "--resume", "train.max_steps=2", "model.lora_alpha=64")
    assert code == 0, err
    assert (
        "--resume: model.lora_alpha differs from the saved run, but neither the run nor this config reads it"
        in caplog.text
    )
    line = one_error_line(
        *cli(capsys, "distill", config, "--resume", "train.max_steps=3", "model.lora_r=4")[::2]
    )
    assert "the config differs from the saved run in " in line and "model.lora_r" in line, line
    # review of session 33, F1: the evaluated teacher's figures record its revision (a preset's too): read
    line = one_error_line(
        *cli(capsys, "distill", config, "--resume", "train.max_steps=3", "model.revision=v2")[::2]
    )
    assert "the config differs from the saved run in " in line and "model.revision" in line, line
    # review 161, R3: the teacher's pin moved to model.teacher_revision is the same revision, not another run
    assert cli(capsys, "distill", config, "run.name=pins", "model.revision=v1")[0] == 0
    moved = ("run.name=pins", "--resume", "train.max_steps=2", "model.revision=", "model.teacher_revision=v1")
    code, _, err = cli(capsys, "distill", config, *moved)
    assert code == 0, err
    line = one_error_line(
        *cli(capsys, "distill", config, *moved[:2], "train.max_steps=3", "model.teacher_revision=v2")[::2]
    )
    assert "model.teacher_revision" in line, line


def test_the_pins_are_compared_as_read_not_as_spelled():
    """Review 161, R3: `model.revision=v1` and `model.teacher_revision=v1` read a hub teacher at one revision; the
    student's revision counts where it reaches a hub id beside the teacher."""
    from ekd.config.inert import same_pins

    hub_teacher = {"teacher": "org/t", "student": "preset:llama-micro", "tokenizer": "teacher"}
    assert same_pins(
        {**hub_teacher, "revision": "v1"}, {**hub_teacher, "revision": "", "teacher_revision": "v1"}
    )
    assert not same_pins({**hub_teacher, "revision": "v1"}, {**hub_teacher, "teacher_revision": "v2"})
    hub_student = {**hub_teacher, "student": "org/s"}
    assert not same_pins({**hub_student, "revision": "v1"}, {**hub_student, "teacher_revision": "v1"})
    assert same_pins(
        {**hub_student, "revision": "s1", "teacher_revision": "v1"},
        {**hub_student, "revision": "s1", "teacher_revision": "v1"},
    )


def test_a_run_read_through_a_token_store_is_the_run_read_in_memory(tmp_path, capsys, monkeypatch):
    """Try-out 119, F1: a token store holds the in-memory path's blocks exactly, yet `--resume data.store_dir=auto`
    was refused as changing "what the run computes", and `ekd compare` made the store run of a seed another method
    (`kd#2`, differing in data.store_dir) instead of a replica of the in-memory one. The keys of
    `READ_ONLY_DATA_KEYS` (where blocks are kept, streaming, the document cap) make no other run."""
    import json

    from ekd.eval.compare import compare_runs

    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(
        Path("."), Path("corpus"), "mem", **{"train.max_steps": 2, "train.checkpoint_every": 1}
    )
    assert cli(capsys, "distill", config, "train.max_steps=1")[0] == 0
    code, _, err = cli(
        capsys, "distill", config, "--resume", "data.store_dir=auto", "data.max_document_chars=0"
    )
    assert code == 0, err
    code, _, err = cli(capsys, "distill", config, "run.name=stored", "data.store_dir=auto")
    assert code == 0, err
    runs = sorted(Path("runs").glob("*/eval.json"))
    assert [p.parent.name for p in runs] == ["mem", "stored"], runs
    summary = compare_runs([p.parent for p in runs], tmp_path / "cmp", plots=False)
    (group,) = summary["groups"]
    assert group["seeds"] == [0], group
    (replica,) = summary["replicas"]
    assert replica["replicas"][0]["run"] == "runs/stored", replica
    assert '"abs": 0.0, "relative": 0.0' in json.dumps(replica), (
        replica
    )  # resumed through the store: bit for bit


def test_a_resume_with_the_teacher_dtype_auto_resolves_to_is_the_same_run(
    tmp_path, capsys, monkeypatch, caplog
):
    """Try-out 119's class (the teacher's dtype as set, not as it ran): `--resume model.teacher_dtype=float32` of
    a kd run with `auto` on a CPU — where auto loads a float32 teacher — was refused as changing what the run
    computes, as train.precision=fp32 of an `auto` run once was; bfloat16 is another teacher and still refused."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU 'auto' is bfloat16")
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    extra = {"train.max_steps": 1, "train.checkpoint_every": 1, "method.preset": "kd"}
    config = config_file(Path("."), Path("corpus"), "kdrun", **extra)
    assert cli(capsys, "distill", config)[0] == 0
    code, _, err = cli(
        capsys, "distill", config, "--resume", "train.max_steps=2", "model.teacher_dtype=float32"
    )
    assert code == 0, err
    line = one_error_line(
        *cli(capsys, "distill", config, "--resume", "train.max_steps=3", "model.teacher_dtype=bfloat16")[::2]
    )
    assert (
        "this run computed in fp32 with a float32 teacher; this config computes in fp32 with a bfloat16 teacher here: "
        "pass model.teacher_dtype=float32 to continue it as it was" in line
    ), line
    # try-out 120, F1: ekd compare took the resumed run (config now float32) for another method than an
    # uninterrupted `auto` one of the same seed; each segment records what ran, so they are replicas
    import json

    from ekd.eval.compare import compare_runs

    marker = json.loads(Path("runs/kdrun/ekd-run.json").read_text())
    assert {(s["autocast"], s["teacher_dtype"]) for s in marker["segments"]} == {("fp32", "float32")}, marker
    # review of session 34, R7: the resume rule reads the arithmetic the run recorded it computed in, not today's
    # device's reading of its settings: a run begun on a GPU in bf16 and resumed here with fp32 changes it
    assert marker["arithmetic"] == {"autocast": "fp32", "teacher_dtype": "float32"}, marker
    Path("runs/kdrun/ekd-run.json").write_text(json.dumps({**marker, "arithmetic": {"autocast": "bf16"}}))
    # try-out 123, F1/F4: refused alike whether the settings changed (fp32) or not (auto, fp32 here), naming the
    # settings that keep it; nothing recorded by the refused attempt
    for settings in (["train.precision=fp32"], []):
        line = one_error_line(
            *cli(capsys, "distill", config, "--resume", "train.max_steps=3", *settings)[::2]
        )
        assert (
            "--resume: this run computed in bf16; this config computes in fp32 here: pass train.precision=bf16 to "
            "continue it as it was" in line
        ), line
        assert json.loads(Path("runs/kdrun/ekd-run.json").read_text())["arithmetic"] == {"autocast": "bf16"}
    code, _, err = cli(capsys, "distill", config, "--resume", "train.max_steps=3", "train.precision=bf16")
    assert code == 0, err  # the advice works: bf16 on this CPU, as the record says
    Path("runs/kdrun/ekd-run.json").write_text(json.dumps(marker))
    assert cli(capsys, "distill", config, "run.name=whole", "train.max_steps=3")[0] == 0
    summary = compare_runs([Path("runs/kdrun"), Path("runs/whole")], tmp_path / "cmp", plots=False)
    assert [g["method"] for g in summary["groups"]] == ["kd"], summary["groups"]
    assert [r["run"] for r in summary["replicas"][0]["replicas"]] == ["runs/whole"], summary["replicas"]
