"""Run configuration: dataclass sections, YAML files, dotted ``key=value`` overrides, validation.

A config is eight sections — ``run, model, data, teacher, method, train, eval, log`` — each a dataclass whose
fields carry a docstring (shown by ``ekd config show --explain``); unknown keys fail with the nearest valid
key; cross-field rules name the dotted key.

- ``sections`` — the dataclasses and their field docstrings
- ``load``     — YAML + overrides → a coerced, validated ``Config``; ``explain``
- ``validate`` — choices, ranges and cross-field rules

    ekd config show configs/demo.yaml train.max_steps=100 method=sekd
"""

from ekd.config.load import (
    CliText,
    all_keys,
    build_config,
    coerce,
    config_from_dict,
    explain,
    field_docs,
    load_config,
    parse_overrides,
    split_config_and_overrides,
)
from ekd.config.sections import (
    READ_ONLY_DATA_KEYS,
    REPORTING_KEYS,
    SECTIONS,
    Config,
    DataConfig,
    EvalConfig,
    LogConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TeacherConfig,
    TrainConfig,
    flat_config,
    is_reporting_key,
    with_todays_defaults,
)
from ekd.config.validate import validate
from ekd.errors import ConfigError

__all__ = [
    "READ_ONLY_DATA_KEYS",
    "REPORTING_KEYS",
    "SECTIONS",
    "CliText",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "MethodConfig",
    "ModelConfig",
    "RunConfig",
    "TeacherConfig",
    "TrainConfig",
    "all_keys",
    "build_config",
    "coerce",
    "config_from_dict",
    "explain",
    "field_docs",
    "flat_config",
    "is_reporting_key",
    "load_config",
    "parse_overrides",
    "split_config_and_overrides",
    "validate",
    "with_todays_defaults",
]
