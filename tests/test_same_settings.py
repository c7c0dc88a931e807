"""What every rank of a torchrun job must agree on (``ekd.train.same_settings``); the refusal itself runs in a
2-rank job in ``test_rank_errors.py`` (another ``train.lr`` or ``train.max_steps`` on rank 1)."""

from __future__ import annotations

from ekd.config import load_config
from ekd.train.same_settings import LOCAL_PATH, _differences, rank_settings


def test_rank_settings_mask_local_paths_and_keep_every_other_value(tmp_path):
    """Nodes may mount the same files at different paths (each resolves its own): local paths are not compared;
    a hub id, a preset, ``pystdlib`` and every non-path key are, and so are the command's flags."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    cfg = load_config(
        None,
        [
            f"data.source={corpus}",
            "model.teacher=Qwen/Qwen2.5-1.5B",
            "model.student=preset:llama-micro",
            f"run.output_dir={tmp_path / 'runs'}",
            "train.lr=0.002",
        ],
    )
    settings = rank_settings(cfg, resume=True)
    assert settings["data.source"] == LOCAL_PATH and settings["run.output_dir"] == LOCAL_PATH
    assert (
        settings["model.teacher"] == "Qwen/Qwen2.5-1.5B" and settings["model.student"] == "preset:llama-micro"
    )
    assert settings["train.lr"] == 0.002 and settings["flag.resume"] is True
    assert rank_settings(load_config(None, ["data.source=pystdlib"]))["data.source"] == "pystdlib"


def test_differences_name_each_key_with_rank_0s_value_and_the_first_other():
    everyone = [{"a": 1, "b": "x"}, {"a": 1, "b": "x"}, {"a": 2, "b": "y", "c": True}]
    assert _differences(everyone) == [("a", "1", 2, "2"), ("b", "x", 2, "y"), ("c", "(unset)", 2, "true")]
    assert _differences([{"a": 1}, {"a": 1}]) == []
