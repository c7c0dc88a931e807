"""Grouped spellings of flat config keys (issue 15): ``model.lora: {r, alpha, dropout, target_modules}``,
``student.export``, ``log.wandb: {project, name}`` in YAML and ``model.lora.r=16`` on the command line are the
flat keys ``model.lora_*`` / ``log.wandb_*``; the resolved config holds only the flat keys."""

from __future__ import annotations

import pytest
import yaml

from ekd.config import ConfigError, load_config
from ekd.config.load import config_from_dict

FLAT = {
    "model": {
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
        "lora_export": "adapter",
    },
    "log": {"wandb_project": "ekd", "wandb_name": "run-1"},
}
GROUPED = {
    "model": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}},
    "student": {"export": "adapter"},
    "log": {"wandb": {"project": "ekd", "name": "run-1"}},
}


def _file(tmp_path, name: str, content: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_grouped_yaml_and_command_line_equal_the_flat_keys(tmp_path):
    flat = load_config([_file(tmp_path, "flat", FLAT)])
    grouped = load_config([_file(tmp_path, "grouped", GROUPED)])
    assert grouped.to_dict() == flat.to_dict()
    assert grouped.model.lora_r == 16 and grouped.model.lora_export == "adapter"
    assert grouped.log.wandb_project == "ekd" and grouped.log.wandb_name == "run-1"
    cli = load_config(
        [],
        [
            "model.lora.r=16",
            "model.lora.alpha=32",
            "model.lora.dropout=0.05",
            "model.lora.target_modules=[q_proj,v_proj]",
            "student.export=adapter",
            "log.wandb.project=ekd",
            "log.wandb.name=run-1",
        ],
    )
    assert cli.to_dict() == flat.to_dict()
    # one canonical form: the resolved config has flat keys only, and reloads to the same config
    resolved = grouped.to_dict()
    assert "lora" not in resolved["model"] and "student" not in resolved and "wandb" not in resolved["log"]
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(resolved))).to_dict() == flat.to_dict()
    # other prefixed keys group the same way
    assert load_config([], ["eval.tasks.limit=7"]).eval.tasks_limit == 7


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.lora=16"], "unknown key 'model.lora'; model.lora groups model.lora_alpha, "),
        (["model.lora.alpah=4"], "did you mean 'model.lora.alpha' (model.lora_alpha)?"),
        (["log.wandb.projct=x"], "did you mean 'log.wandb.project' (log.wandb_project)?"),
        # try-out 10: a mapping key is set whole; the hint said only "did you mean 'data.eval_sources'?"
        (
            ["data.eval_sources.e=x.txt"],
            'data.eval_sources is a mapping, set whole: write "data.eval_sources={e: x.txt}"',
        ),
        (["eval.set_tags.held=shifted"], 'write "eval.set_tags={held: shifted}"'),
    ],
)
def test_unknown_group_members_name_the_flat_keys(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config([], overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_key_spelled_twice_in_one_file_is_one_line(tmp_path):
    both = {"model": {"lora_r": 8, "lora": {"r": 16}}}
    with pytest.raises(ConfigError, match=r"model.lora.r and model.lora_r both set model.lora_r; keep one"):
        load_config([_file(tmp_path, "both", both)])
    alias = {"model": {"lora_export": "merged"}, "student": {"export": "adapter"}}
    with pytest.raises(ConfigError, match=r"model.lora_export is set twice \(through an alias\)"):
        load_config([_file(tmp_path, "alias", alias)])
    with pytest.raises(ConfigError, match=r"unknown section 'studnt'"):
        load_config([_file(tmp_path, "typo", {"studnt": {"export": "adapter"}})])
