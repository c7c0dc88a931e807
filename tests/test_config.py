"""ekd.config: YAML files + dotted overrides (later wins), coercion by annotation, unknown keys with the
nearest valid key, cross-field validation naming the dotted key, method presets, YAML round trip, field
docstrings, ``explain()``, and every shipped config under ``configs/``."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from ekd.config import (
    SECTIONS,
    Config,
    ConfigError,
    all_keys,
    config_from_dict,
    explain,
    field_docs,
    flat_config,
    is_reporting_key,
    load_config,
)
from ekd.config.paths import resolve_paths
from ekd.methods import presets

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(p for pattern in ("**/*.yaml", "**/*.yml") for p in CONFIGS_DIR.glob(pattern))


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {s: hints[s] for s in SECTIONS}


# ---------------------------------------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------------------------------------


def test_defaults_load_and_validate():
    cfg = load_config()
    defaults = Config()
    resolve_paths(defaults)  # run.output_dir=runs comes out absolute
    assert cfg == defaults  # the default preset ('kd') restates the defaults
    assert SECTIONS == ["run", "model", "data", "teacher", "method", "train", "eval", "log"]


def test_file_then_overrides_later_wins(tmp_path):
    a = _write(tmp_path, "train:\n  lr: 1.0e-3\n  max_steps: 50\nrun:\n  name: a\n", "a.yaml")
    b = _write(tmp_path, "train:\n  lr: 2.0e-3\n", "b.yaml")
    cfg = load_config(a)
    assert (cfg.train.lr, cfg.train.max_steps, cfg.run.name) == (1e-3, 50, "a")
    cfg = load_config([a, b])
    assert (cfg.train.lr, cfg.train.max_steps) == (2e-3, 50)  # second file wins, first file's other keys stay
    cfg = load_config([a, b], ["train.lr=3e-3", "run.name=c"])
    assert (cfg.train.lr, cfg.run.name) == (3e-3, "c")
    cfg = load_config([a, b], ["train.lr=3e-3", "train.lr=4e-3"])
    assert cfg.train.lr == 4e-3  # the last override wins
    assert load_config(str(a)).train.max_steps == 50  # a str path as well as a Path


def test_empty_file_and_empty_section(tmp_path):
    for text in ("", "# only a comment\n", "train:\n"):  # an empty file must not start the default run
        with pytest.raises(ConfigError, match="is empty"):
            load_config(_write(tmp_path, text))
    both = load_config(_write(tmp_path, "train:\nrun:\n  seed: 3\n", "s.yaml"))
    assert both.train == load_config().train and both.run.seed == 3


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- just\n- a list\n", "l.yaml"))
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(_write(tmp_path, "train: 3\n", "t.yaml"))


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.max_steps"])


# ---------------------------------------------------------------------------------------------------------
# Coercion by annotation
# ---------------------------------------------------------------------------------------------------------


def test_coercion_from_a_file(tmp_path):
    path = _write(
        tmp_path,
        """
train:
  lr: 3e-4            # PyYAML (YAML 1.1) reads this as the *string* '3e-4'
  max_steps: '100'
  compile: 'true'
  activation_checkpointing: yes
  min_lr_ratio: 0
run:
  seed: 7.0
  name: 12
method:
  bandit_budgets: [0.1, '0.2', 1]
  scorer_weights: {teacher_entropy: '0.5', student_ce: 2}
data:
  eval_sources: {shifted: some/path.txt}
""",
    )
    cfg = load_config(path)
    assert cfg.train.lr == 3e-4 and type(cfg.train.lr) is float
    assert cfg.train.max_steps == 100 and type(cfg.train.max_steps) is int
    assert cfg.train.compile is True and cfg.train.activation_checkpointing is True
    assert cfg.train.min_lr_ratio == 0.0 and type(cfg.train.min_lr_ratio) is float
    assert cfg.run.seed == 7 and type(cfg.run.seed) is int  # an integral float is an int
    assert cfg.run.name == "12"
    assert cfg.method.bandit_budgets == [0.1, 0.2, 1.0] and all(
        type(x) is float for x in cfg.method.bandit_budgets
    )
    assert cfg.method.scorer_weights == {"teacher_entropy": 0.5, "student_ce": 2.0}
    assert cfg.data.eval_sources == {"shifted": "some/path.txt"}


def test_coercion_from_the_command_line():
    cfg = load_config(
        None,
        [
            "train.lr=3e-4",
            "train.max_steps=100",
            "train.warmup_steps=1e1",  # exponent notation of an integer
            "train.compile=true",
            "eval.plots=false",
            "log.tensorboard=0",
            "method.bandit_budgets=[0.1, 0.25]",
            "method.scorer_weights={teacher_entropy: 1, student_ce: 0.5}",
            "data.eval_sources={a: x.txt}",
        ],
    )
    assert cfg.train.lr == 3e-4 and type(cfg.train.lr) is float
    assert cfg.train.max_steps == 100 and type(cfg.train.max_steps) is int
    assert cfg.train.warmup_steps == 10 and type(cfg.train.warmup_steps) is int
    assert cfg.train.compile is True and cfg.eval.plots is False and cfg.log.tensorboard is False
    assert cfg.method.bandit_budgets == [0.1, 0.25]
    assert cfg.method.scorer_weights == {"teacher_entropy": 1.0, "student_ce": 0.5}
    assert cfg.data.eval_sources == {"a": "x.txt"}
    # a comma-separated string is a list too
    assert load_config(None, ["method.bandit_budgets=0.1,0.3"]).method.bandit_budgets == [0.1, 0.3]


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_steps=3.5", "train.max_steps"),
        ("train.max_steps='3.5'", "train.max_steps"),
        ("train.max_steps=abc", "train.max_steps"),
        ("train.max_steps=true", "train.max_steps"),
        ("train.lr=fast", "train.lr"),
        ("train.lr=true", "train.lr"),
        ("train.compile=maybe", "train.compile"),
        ("train.compile=2", "train.compile"),
        ("method.bandit_budgets={a: 1}", "method.bandit_budgets"),
        ("method.bandit_budgets=[0.1, x]", "method.bandit_budgets"),
        ("method.scorer_weights=[1, 2]", "method.scorer_weights"),
    ],
)
def test_bad_types_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: expected"):
        load_config(None, [override])


def test_bad_dict_value_error_names_the_entry():
    with pytest.raises(ConfigError, match=r"^method\.scorer_weights\.teacher_entropy: expected float"):
        load_config(None, ["method.scorer_weights={teacher_entropy: high}"])


def test_int_field_given_a_float_in_a_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(_write(tmp_path, "train:\n  max_steps: 3.5\n"))


@pytest.mark.parametrize("text", ["2.5e0", "1.25e1"])
def test_int_field_given_non_integer_exponent_notation_is_an_error(text):
    with pytest.raises(ConfigError, match=r"^run\.seed: expected int"):  # got run.seed == 2 / 12
        load_config(None, [f"run.seed={text}"])


@pytest.mark.parametrize("override", ["run.name=1.10", "model.revision=0755", "run.name=no"])
def test_str_fields_keep_the_command_line_text(override):
    key, text = override.split("=", 1)
    section, name = key.split(".")
    assert getattr(getattr(load_config(None, [override]), section), name) == text


@pytest.mark.parametrize(
    "line, key, text",
    [
        ("run:\n  name: off", "run.name", "off"),  # was the run directory runs/False
        ("run:\n  name: yes", "run.name", "yes"),
        ("run:\n  name: 010", "run.name", "010"),  # was runs/8 (YAML 1.1 octal; try-out 90, F2)
        ("run:\n  name: 12:30", "run.name", "12:30"),  # was 750 (sexagesimal)
        ("run:\n  name: 0x10", "run.name", "0x10"),
        ("run:\n  name: 2024", "run.name", "2024"),
        ("run:\n  name: 2024-01-01", "run.name", "2024-01-01"),
        ("model:\n  revision: 1.10", "model.revision", "1.10"),  # was '1.1'
        ("model:\n  revision: 0123456", "model.revision", "0123456"),  # a commit prefix, was '42798'
        ("eval:\n  tasks: [no, tiny_mc]", "eval.tasks", ["no", "tiny_mc"]),  # try-out 90, F5
    ],
)
def test_a_text_key_keeps_the_text_written_in_a_yaml_file(tmp_path, line, key, text):
    """YAML 1.1 reads unquoted off/yes as booleans and 010, 12:30, 0x10, 1.10 as numbers whose text is another:
    a text key keeps what the file says, as a command line's text does."""
    path = tmp_path / "c.yaml"
    path.write_text(line + "\nmethod: kd\n")
    section, name = key.split(".")
    assert getattr(getattr(load_config([str(path)], []), section), name) == text


@pytest.mark.parametrize(
    "document, key, expected",
    [
        # try-out 92, F1: a set named `no` became 'False', its source 0x10 the directory '16'
        (
            "data:\n  eval_sources: {no: 0x10, 010: a.txt}\n",
            "data.eval_sources",
            {"no": "0x10", "010": "a.txt"},
        ),
        # F2: keys a merge key brings in were read by YAML alone
        ("model: {<<: {revision: 0123456}}\n", "model.revision", "0123456"),
    ],
)
def test_names_and_merged_keys_keep_their_text_too(tmp_path, document, key, expected):
    path = tmp_path / "c.yaml"
    path.write_text(document)
    section, name = key.split(".")
    value = getattr(getattr(load_config([str(path)], []), section), name)
    if isinstance(expected, dict):
        assert {
            k: v.rsplit("/", 1)[-1] for k, v in value.items()
        } == expected  # local paths come out absolute
    else:
        assert value == expected


@pytest.mark.parametrize(
    "document, said",
    [
        ("train:\n  lr: 0.1\n  lr: 0.2\n", "line 3, column 3: the key 'lr' is written twice in one mapping"),
        ("data:\n  eval_sources:\n    null: c.txt\n    ~: d.txt\n", "the key null (or ~) is written twice"),
        ("train: {}\ntrain: {lr: 0.1}\n", "the key 'train' is written twice"),
    ],
)
def test_a_key_written_twice_is_refused(tmp_path, document, said):
    """Try-out 95, F7: YAML keeps the last of two equal keys in silence — two eval sets named null and ~ left one,
    a second lr replaced the first."""
    path = tmp_path / "c.yaml"
    path.write_text(document)
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config([str(path)], [])
    with pytest.raises(ConfigError, match="data.eval_sources=.*the key 'a' is written twice"):
        load_config(None, ["data.eval_sources={a: x.txt, a: y.txt}"])


@pytest.mark.parametrize(
    "document",
    [
        'data:\n  eval_sources: {1: a.txt, "1": b.txt}\n',
        'run: {name: off}\ndata:\n  eval_sources: {010: a.txt, "010": b.txt}\n',
    ],
)
def test_two_entries_named_alike_as_written_are_refused(tmp_path, document):
    """Try-out 96, F1: `{1: a, "1": b}` kept one set in silence — and the text reading of the whole file was dropped
    with it (a `run.name: off` beside them was refused as a boolean)."""
    path = tmp_path / "c.yaml"
    path.write_text(document)
    with pytest.raises(
        ConfigError, match="data.eval_sources: two of its entries have the same name as written"
    ):
        load_config([str(path)], [])
    with pytest.raises(ConfigError, match="two of its entries have the same name as written"):
        load_config(None, ['data.eval_sources={1: a.txt, "1": b.txt}'])


def test_a_key_a_merge_brings_in_may_be_written_again(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {<<: {revision: abc}, revision: def}\n")
    assert load_config([str(path)], []).model.revision == "def"


@pytest.mark.parametrize(
    "written", ["data:\n  eval_sources:\n    null: c.txt\n", "eval:\n  set_tags: {~: x}\n"]
)
def test_an_entry_named_null_is_refused(tmp_path, written):
    """Try-out 95, F7: an eval set named null or ~ was named 'None'."""
    path = tmp_path / "c.yaml"
    path.write_text(written)
    with pytest.raises(ConfigError, match=r"an entry has no name \(YAML reads null and ~ as none\)"):
        load_config([str(path)], [])


def test_a_required_text_left_null_says_what_yaml_read(tmp_path):
    """Try-out 95, F12: `data: {source: null}` was 'must not be empty' with no word of the null."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  source: null\n")
    with pytest.raises(
        ConfigError, match=re.escape("data.source must not be empty (YAML reads null and ~ as none)")
    ):
        load_config([str(path)], [])


def test_a_list_typed_on_the_command_line_keeps_its_items_text():
    cfg = load_config(None, ["eval.tasks=[off,tiny_mc]", "run.name=off"])
    assert (cfg.eval.tasks, cfg.run.name) == (["off", "tiny_mc"], "off")


def test_typed_keys_still_read_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "train:\n  lr: 1.10e-3\n  max_steps: 010\neval:\n  plots: off\nrun:\n  name: null\n  seed: 7\n"
    )
    # null is no text, as before; the refusal says so (try-out 92, F5: it said "got ''")
    with pytest.raises(
        ConfigError, match=r"run.name must be a plain name .*got an empty value .*quote 'null'"
    ):
        load_config([str(path)], [])
    path.write_text("train:\n  lr: 1.10e-3\n  max_steps: 010\n  warmup_steps: 1\neval:\n  plots: off\n")
    cfg = load_config([str(path)], [])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.eval.plots) == (
        1.1e-3,
        8,
        False,
    )  # YAML 1.1 octal, as before


# ---------------------------------------------------------------------------------------------------------
# Unknown keys and sections
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, suggestion",
    [
        ("train.max_step", "train.max_steps"),
        ("trian.lr", "train.lr"),
        ("method.divergance", "method.divergence"),
        ("train.warmup", "train.warmup_steps"),
    ],
)
def test_unknown_key_on_the_command_line_suggests_the_nearest(bad, suggestion):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{bad}=1"])
    msg = str(e.value)
    assert f"'{bad}'" in msg and f"did you mean '{suggestion}'" in msg and "command line" in msg


def test_unknown_key_in_a_file_suggests_the_nearest(tmp_path):
    path = _write(tmp_path, "train:\n  max_step: 10\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "'train.max_step'" in msg and "did you mean 'train.max_steps'" in msg


def test_unknown_section_in_a_file_suggests_the_nearest(tmp_path):
    path = _write(tmp_path, "trian:\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "unknown section 'trian'" in msg and "did you mean 'train'" in msg
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        load_config(_write(tmp_path, "optimizer:\n  lr: 1.0e-3\n", "o.yaml"))


def test_unknown_section_on_the_command_line():
    with pytest.raises(ConfigError, match="unknown key 'optimizer.lr'"):
        load_config(None, ["optimizer.lr=1e-3"])
    with pytest.raises(ConfigError, match="unknown key 'max_steps'.*did you mean 'train.max_steps'"):
        load_config(None, ["max_steps=10"])


@pytest.mark.parametrize(
    "key, meant",
    [
        ("train.eval_every", "'eval.every'"),  # the section's name joined to the key (try-out 74, F5)
        ("train.block_length", "'data.block_length'"),  # the key of another section
        ("data.max_steps", "'train.max_steps' or 'data.max_tokens'"),  # then this section's close keys
    ],
)
def test_a_key_written_under_another_section_points_at_its_own(key, meant):
    with pytest.raises(ConfigError, match=f"unknown key '{key}'; did you mean {meant}"):
        load_config(None, [f"{key}=1"])


@pytest.mark.parametrize("key", ["method.temperature_start", "method.tau"])
def test_a_key_named_by_its_meaning_points_at_the_schedules_start(key):
    """τ0 of the temperature schedule is method.kd_temperature (beside method.temperature_end): a spelling match
    would suggest method.temperature, the policy's name."""
    with pytest.raises(ConfigError, match=f"unknown key '{key}'; did you mean 'method.kd_temperature'"):
        load_config(None, [f"{key}=2.0"])


@pytest.mark.parametrize(
    "key, meant",
    [
        ("data.pack", "data.document_attention"),
        ("data.blok_length", "data.block_length"),
        ("data.foo", "data.format"),
    ],
)
def test_an_unknown_key_of_a_known_section_is_matched_to_that_sections_keys(key, meant):
    """Try-out 35: 'data.pack' got "did you mean 'data'?" — a section is no key to set. Packing is always on;
    the key that chooses how packed documents attend is named."""
    with pytest.raises(ConfigError, match=f"unknown key '{key}'; did you mean '{meant}'\\?$"):
        load_config(None, [f"{key}=1"])


def test_unknown_key_in_a_saved_config():
    raw = Config().to_dict()
    raw["train"]["max_step"] = 5
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        config_from_dict(raw)


# ---------------------------------------------------------------------------------------------------------
# Cross-field validation
# ---------------------------------------------------------------------------------------------------------


def test_a_warmup_as_long_as_the_run_names_every_value_that_works():
    """Try-out 10: for max_steps=10 the hint said 'set train.warmup_steps=1 (or fewer)'; any value below 10 works."""
    with pytest.raises(ConfigError) as e:
        load_config([], ["train.max_steps=10"])  # the default warmup is 10
    assert str(e.value) == (
        "train.warmup_steps must be < train.max_steps (10 (its default) ≥ 10); set it to any value from 0 to 9 "
        "(a tenth of the run, train.warmup_steps=1, is usual)"
    )


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.block_length=1"], "data.block_length"),
        (["train.warmup_steps=100", "train.max_steps=100"], "train.warmup_steps"),
        (["train.warmup_steps=500", "train.max_steps=100"], "train.warmup_steps"),
        (["method.divergence=reverse_kl", "method.target=rs"], "method.divergence"),
        (["method.divergence=jsd", "method.target=topk"], "method.divergence"),
        (["teacher.source=cache"], "teacher.cache_dir"),
        (["teacher.source=cache", "teacher.cache_dir=/x", "method.target=dense"], "teacher.source"),
        (["method.divergence=hellinger"], "method.divergence"),
        (["method.divergence=forward_kll"], "method.divergence"),
        (["method.jsd_beta=1.5"], "method.jsd_beta"),
        (
            ["method.preset=atkd", "method.atkd_lambda=5"],
            "method.atkd_lambda",
        ),  # try-out 121, F1: trained away
        (["method.kd_weight=0", "method.ce_weight=0"], "method.kd_weight"),
        (["train.lr=0"], "train.lr"),
        (["train.max_steps=0"], "train.max_steps"),
        (["method.select_fraction=0"], "method.select_fraction"),
        (["method.bucket_low=50", "method.bucket_high=10"], "method.bucket_low"),
        (["data.prompt_field=q"], "data.prompt_field"),
        (["run.name=a/b"], "run.name"),
        (["train.loss_path=fast"], "train.loss_path"),
    ],
)
def test_validation_errors_name_the_dotted_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert key in str(e.value)


def test_choice_errors_suggest_the_nearest_value():
    with pytest.raises(ConfigError, match="did you mean 'forward_kl'"):
        load_config(None, ["method.divergence=forward_kll"])
    with pytest.raises(ConfigError, match="did you mean 'reference'"):
        load_config(None, ["train.loss_path=referense"])


@pytest.mark.parametrize(
    "override, hint",
    [
        # a part of a compound name: 'kll' is no typo of any whole name, but of the 'kl' they share
        ("method.divergence=kll", "did you mean 'forward_kl', 'reverse_kl' or 'skew_forward_kl'?"),
        ("method.divergence=kl", "did you mean 'forward_kl', 'reverse_kl' or 'skew_forward_kl'?"),
        # an abbreviation: every name it starts
        ("method.divergence=skew", "did you mean 'skew_forward_kl' or 'skew_reverse_kl'?"),
        ("teacher.cache_positions=teacher", "did you mean 'teacher_entropy_topk'?"),
        ("method.sample_scorer=entropy", "did you mean 'student_entropy'?"),
        ("eval.set_tags={a: shifted}", "did you mean 'shift'?"),
    ],
)
def test_choice_errors_suggest_for_short_and_partial_values(override, hint):
    """Every choice-restricted value gets the suggestion of unknown keys and presets (one matcher)."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert hint in str(e.value) and "must be one of" in str(e.value)


def test_unknown_preset_suggests_the_nearest():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["method=rkll"])
    msg = str(e.value)
    assert "method.preset" in msg and "'rkll'" in msg and "did you mean 'rkl'" in msg


@pytest.mark.parametrize(
    "override, meant",
    [
        ("method.divergence=FORWARD_KL", "forward_kl"),
        ("method=KD", "kd"),
        ("method=SEKD", "sekd"),
        ("method.target=RS", "rs"),
        ("data.format=JSONL", "jsonl"),
        ("method.divergence=Forwrd_KL", "forward_kl"),
    ],
)
def test_a_choice_in_another_case_is_suggested(override, meant):
    """Try-out 108, F11: the did-you-mean compared case-sensitively, so 'FORWARD_KL' or 'KD' got none."""
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides, named",
    [
        (
            ["method=bandit", "method.bandit_min_fraction=0", "method.bandit_max_fraction=0"],
            "bandit_max_fraction",
        ),
        (["eval.ece_bins=1000000000"], "eval.ece_bins"),
        (["eval.entropy_buckets=100000000"], "eval.entropy_buckets"),
        (
            ["method.scorer=composite", "method.scorer_weights={teacher_entropy: 0, student_entropy: 0}"],
            "method.scorer_weights are all 0",
        ),
        (  # try-out 125, F3: refused in the first step, after the models loaded, with a fix that did not fit
            [
                "method.policy=pos_rs",
                "method.scorer=composite",
                "method.scorer_weights={student_entropy: 1.0}",
            ],
            "set method.scorer_normalization=minmax (each score scaled to [0, 1])",
        ),
        (
            [
                "method.policy=pos_rs",
                "method.scorer=composite",
                "method.scorer_normalization=minmax",
                "method.scorer_weights={student_entropy: 1.0, teacher_entropy: -0.5}",
            ],
            "can score a position negative: give teacher_entropy a weight ≥ 0 in method.scorer_weights",
        ),
        (  # try-out 127, F10: both causes in one line, not one refusal after the other
            [
                "method.policy=pos_rs",
                "method.scorer=composite",
                "method.scorer_weights={student_entropy: 1.0, teacher_entropy: -0.5}",
            ],
            "set method.scorer_normalization=minmax (each score scaled to [0, 1]) and give teacher_entropy a weight",
        ),
    ],
)
def test_settings_that_would_train_nothing_or_fail_after_training_are_refused(overrides, named):
    """Try-out 108: a LinUCB budget of 0 selected no position (loss 0 at every step, the student unchanged); a
    billion ECE bins or entropy buckets trained the whole run and were killed for memory at its evaluation;
    composite weights all 0 scored every position 0 (top-k kept each sequence's first positions); pos_rs over
    z-scored or negatively weighted scores failed in the first step."""
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "override, said",
    [
        ("run.name= lead", "run.name must not start or end with a space"),
        ("run.name=trail ", "run.name must not start or end with a space"),
        ("run.name=" + "a" * 250, "run.name is 250 bytes long: at most 245 (a file name holds 255"),
        ("train.max_steps=5", "train.warmup_steps must be < train.max_steps (10 (its default) ≥ 5)"),
    ],
)
def test_names_and_defaults_that_would_fail_later_are_said_at_load(override, said):
    """Try-out 108, F14: a run name with a space at an end made 'runs/ lead'; a 300-character name failed at the
    start as 'file name too long' without naming run.name; max_steps alone was refused by a warmup never set."""
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config(None, [override])


def test_valid_sparse_and_cache_combinations_pass():
    cfg = load_config(None, ["method.target=rs", "teacher.source=cache", "teacher.cache_dir=/tmp/cache"])
    assert (cfg.method.target, cfg.teacher.source) == ("rs", "cache")
    assert load_config(None, ["method.target=topk", "method.topk_tail=ghost"]).method.topk_tail == "ghost"
    # a sparse target is fine with a non-KL divergence when there is no KD term at all
    load_config(
        None, ["method.divergence=jsd", "method.target=rs", "method.kd_weight=0", "method.ce_weight=1"]
    )


# ---------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------


def test_method_shorthand_applies_the_preset_and_explicit_keys_win():
    cfg = load_config(None, ["method=rkl"])
    assert (cfg.method.preset, cfg.method.divergence) == ("rkl", "reverse_kl")
    cfg = load_config(None, ["method=rkl", "method.divergence=jsd"])
    assert (cfg.method.preset, cfg.method.divergence) == ("rkl", "jsd")
    cfg = load_config(None, ["method.divergence=jsd", "method=rkl"])  # order of the two does not matter
    assert cfg.method.divergence == "jsd"
    assert load_config(None, ["method.preset=skl"]).method.divergence == "skew_forward_kl"


def test_method_shorthand_in_a_file_names_the_preset_as_on_a_command_line(tmp_path):
    """Try-out 83: messages say "e.g. method=rskd"; written in a YAML file as ``method: rskd`` it was refused
    ("section 'method' must be a mapping"). It names the preset, as ``method=rskd`` does."""
    cfg = load_config(_write(tmp_path, "method: rkl\n"))
    assert (cfg.method.preset, cfg.method.divergence) == ("rkl", "reverse_kl")
    with pytest.raises(ConfigError, match="method.preset"):
        load_config(_write(tmp_path, "method: no_such_method\n", "bad.yaml"))


def test_preset_in_a_file_with_explicit_keys(tmp_path):
    path = _write(tmp_path, "method:\n  preset: rkl\n  divergence: tvd\n")
    assert load_config(path).method.divergence == "tvd"
    # a preset named on the command line still sits under the file's explicit keys
    assert load_config(path, ["method=jsd"]).method.divergence == "tvd"
    assert (
        load_config(_write(tmp_path, "method:\n  preset: rkl\n", "p.yaml"), ["method=jsd"]).method.divergence
        == "jsd"
    )


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_applies_its_values_and_validates(name):
    cfg = load_config(None, [f"method={name}"])
    assert cfg.method.preset == name
    for key, value in presets.get(name).values.items():
        assert getattr(cfg.method, key) == value, f"preset {name}: method.{key}"


# ---------------------------------------------------------------------------------------------------------
# Round trip, docs, explain
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "method=jsd",
            "method.jsd_beta=0.25",
            "method.scorer_weights={teacher_entropy: 1.0, student_ce: 0.5}",
            "method.bandit_budgets=[0.05, 0.5]",
            "train.lr=3e-4",
            "train.max_steps=1000",
            "train.compile=true",
            "run.name=rt",
            "model.revision=main",
            "data.eval_sources={shift: other.txt}",
            "log.level=DEBUG",
        ],
    ],
    ids=["defaults", "non_default"],
)
def test_to_yaml_round_trips(overrides):
    cfg = load_config(None, overrides)
    text = cfg.to_yaml()
    raw = yaml.safe_load(text)
    assert list(raw) == SECTIONS
    again = config_from_dict(raw)
    assert again == cfg
    assert again.to_yaml() == text


@pytest.mark.parametrize(
    "written", ["1e3", "1.0E-3", "+12", "0o17", "0x1F", "1_000", "12", "-3.5", "null", "True"]
)
def test_to_yaml_quotes_text_a_yaml_1_2_reader_takes_for_a_number(written):
    """Try-out 92, F8: `ekd config show` printed the run name 1e3 bare, which PyYAML (YAML 1.1) reads back as text
    but YAML 1.2 readers (ruamel.yaml, yq, Go's yaml.v3) as the number 1000."""
    cfg = load_config(None, [f"run.name={written}", f"model.revision={written}"])
    text = cfg.to_yaml()
    assert f"  name: '{written}'" in text and f"  revision: '{written}'" in text
    assert config_from_dict(yaml.safe_load(text)) == cfg


def test_to_yaml_leaves_other_text_bare():
    text = load_config(None, ["run.name=x1e3", "model.revision=v1.0"]).to_yaml()
    assert "  name: x1e3\n" in text and "  revision: v1.0\n" in text


def test_round_trip_through_a_file(tmp_path):
    cfg = load_config(None, ["method=srkl", "train.lr=1e-5", "data.block_length=64"])
    assert load_config(_write(tmp_path, cfg.to_yaml())) == cfg


@pytest.mark.parametrize("section", SECTIONS)
def test_every_field_has_a_docstring(section):
    """Project rule (STYLE 8): each config field carries help text under it."""
    cls = _section_classes()[section]
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name, "").strip()]
    assert not missing, f"fields without a docstring in [{section}]: {missing}"


@dataclasses.dataclass
class _Probe:  # module level: field_docs parses the class source with ast, unindented
    documented: int = 1
    """Has help."""
    undocumented: int = 2
    # a comment is not a docstring
    also: str = "x"
    """Multi-line
    help."""


def test_field_docs_detects_a_missing_docstring():
    docs = field_docs(_Probe)
    assert docs == {"documented": "Has help.", "also": "Multi-line help."}


def test_reporting_keys_are_the_log_section():
    """``is_reporting_key``: a flat key of the log section only reports; every other key, and a key that merely
    starts with the letters of one (no section dot), is part of what the run computes."""
    assert is_reporting_key("log.progress") and is_reporting_key("log.wandb_project")
    assert not any(map(is_reporting_key, ("train.lr", "run.seed", "logging.level", "log")))


def test_flat_config_keeps_values_and_reads_an_empty_section_as_no_keys():
    """``flat_config``: sections of keys → ``section.key``; a mapping value (method.scorer_weights) stays one
    value; a YAML-empty section (None) has no keys; a section that is no mapping keeps its value under its name."""
    saved = {"train": {"lr": 0.1}, "method": {"scorer_weights": {"a": 1.0}}, "log": None, "eval": 3}
    assert flat_config(saved) == {"train.lr": 0.1, "method.scorer_weights": {"a": 1.0}, "eval": 3}
    assert set(flat_config(Config().to_dict())) == set(all_keys())


def test_explain_lists_every_key_with_its_doc():
    text = explain()
    classes = _section_classes()
    docs = {s: field_docs(c) for s, c in classes.items()}
    for key in all_keys():
        section, name = key.split(".")
        assert f"  {key}: " in text, key
        assert docs[section][name] in text, key
    for section in SECTIONS:
        assert f"[{section}]" in text
    assert len(all_keys()) == sum(len(dataclasses.fields(c)) for c in classes.values())


# ---------------------------------------------------------------------------------------------------------
# Shipped configs
# ---------------------------------------------------------------------------------------------------------


def test_configs_directory_is_found():
    assert SHIPPED, f"no YAML files under {CONFIGS_DIR}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # and it survives the save/reload a run does
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_a_number_given_as_the_temperature_policy_names_the_temperature_key():
    """Try-out 41, F4: ``method.temperature=2`` (meaning τ = 2) listed the policies without pointing to
    ``method.kd_temperature``."""
    with pytest.raises(
        ConfigError, match=r"got '2'; a number is method.kd_temperature's: method.kd_temperature=2"
    ):
        load_config([], ["method=ekd", "method.temperature=2"])
    with pytest.raises(ConfigError) as e:  # try-out 42, F8: no τ, so no advice to set τ = -1
        load_config([], ["method=ekd", "method.temperature=-1"])
    assert "kd_temperature" not in str(e.value)


@pytest.mark.parametrize(
    "method, named",
    [
        (
            "egad",
            ["method.target=dense", "method.temperature=entropy_map", "method.feature_weight=0 turns it off"],
        ),
        (
            "adakd",
            ["method.target=dense", "method.divergence=reverse_kl", "method.temperature=idts", "hellinger"],
        ),
    ],
)
def test_a_method_a_cache_cannot_serve_is_told_every_reason_at_once(method, named):
    """Try-out 73, F3: method=egad / adakd from a cache were refused one blocker at a time (3 and 4 runs), the
    first fix offered (a sparse target) leading only to the next refusal."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"method={method}", "teacher.source=cache", "teacher.cache_dir=/tmp/cache"])
    line = str(info.value)
    assert line.startswith(f"teacher.source=cache cannot train method.preset={method} as configured: "), line
    assert all(n in line for n in named) and line.endswith("use teacher.source=online"), line


@pytest.mark.parametrize(
    "override, hint",
    [
        ("model.teacher_dtype=fp16", "did you mean 'float16'?"),
        ("model.export_dtype=half", "did you mean 'float16'?"),
        ("train.precision=float32", "did you mean 'fp32'?"),
        ("train.precision=fp16", "(fp16 is not offered here: fp32, bf16 are)"),
        ("model.export_dtype=float64", "(float64 is not offered here: float32, bfloat16, float16 are)"),
        ("train.precision=double", "(double is not offered here: fp32, bf16 are)"),
        (
            "model.export_dtype=torch.float64",
            "(torch.float64 is not offered here: float32, bfloat16, float16 are)",
        ),
        ("model.teacher_dtype=torch.bfloat16", "did you mean 'bfloat16'?"),
    ],
)
def test_a_dtype_spelt_the_other_way_points_at_the_keys_spelling(override, hint):
    """Try-out 75, F6: model.teacher_dtype=fp16 got no suggestion, train.precision=fp16 was offered bf16."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).endswith(hint), info.value


@pytest.mark.parametrize("value", ["null", "None", "~", " NONE "])
def test_a_null_spelled_for_a_directory_on_the_command_line_is_refused(value):
    """Try-out 79, F8: `data.store_dir=null` made a token store in ./null (a command line keeps a text setting as
    written; a YAML file reads null as unset). Refused, with the spelling that leaves it unset."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"data.store_dir={value}"])
    assert str(e.value) == (
        f"data.store_dir={value.strip()} would name a directory '{value.strip()}' here; to leave it unset, give it "
        "empty (data.store_dir=)"
    )
    with pytest.raises(
        ConfigError, match="run.output_dir=null would name a directory 'null' here; give a directory"
    ):
        load_config(None, ["run.output_dir=null"])
    assert load_config(None, ["data.store_dir="]).data.store_dir == ""
    assert load_config(None, ["run.name=null"]).run.name == "null"  # a name, not a directory: as written


def test_a_flow_mapping_without_a_space_after_the_colon_is_said_so():
    """Try-out 125, F5: `{teacher_entropy:1.0,student_entropy:0.5}` (YAML: keys 'teacher_entropy:1.0' without a
    value) was told 'expected float, got None', beside the float the user wrote."""
    with pytest.raises(ConfigError) as e:
        load_config(
            None,
            ["method.scorer=composite", "method.scorer_weights={teacher_entropy:1.0,student_entropy:0.5}"],
        )
    assert str(e.value) == (
        "method.scorer_weights: the entry 'teacher_entropy:1.0' has no value (YAML reads 'name:value' without a space "
        "as one name); write a space after the colon: {teacher_entropy: 1.0}"
    )


@pytest.mark.parametrize(
    "overrides, said",
    [
        (["eval.set_tags={eval:in_distribution}"], "write a space after the colon: {eval: in_distribution}"),
        (["data.eval_sources={held:/tmp/x.txt}"], "write a space after the colon: {held: /tmp/x.txt}"),
    ],
)
def test_a_text_mapping_without_a_space_after_the_colon_is_said_so(overrides, said):
    """Try-out 127, F9: the hint of try-out 125 F5 covered mappings of numbers only: `{eval:in_distribution}` was
    told "must be one of in_distribution, …, got ''" beside the value the user wrote."""
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config(None, overrides)


def test_a_section_written_without_a_space_after_the_colon_is_said_so(tmp_path):
    """Try-out 127, F9: `method: {preset:kd}` in a YAML file was "unknown key 'method.preset:kd'; did you mean
    'method.preset'?", without the cause."""
    path = tmp_path / "c.yaml"
    path.write_text("method: {preset:kd}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path), [])
    assert str(e.value) == (
        f"{path}: unknown key 'method.preset:kd'; YAML reads 'name:value' without a space as one name: write "
        "preset: kd"
    )


def test_a_section_value_with_a_dot_written_without_a_space_is_said_so(tmp_path):
    """Try-out 129, F11: `train: {lr:0.01}` was "did you mean 'train.lr'?" — the hint split the key inside 0.01."""
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr:0.01}\n")
    with pytest.raises(ConfigError, match=re.escape("without a space as one name: write lr: 0.01")):
        load_config(str(path), [])
