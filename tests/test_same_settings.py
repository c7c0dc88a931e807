"""What every rank of a torchrun job must agree on (``ekd.train.same_settings``); the refusal itself runs in a
2-rank job in ``test_rank_errors.py`` (another ``train.lr``, ``train.max_steps`` or output directory on rank 1)."""

from __future__ import annotations

from ekd.config import load_config
from ekd.train.same_settings import LOCAL_PATH, _differences, masked, rank_settings


def test_rank_settings_keep_every_key_but_reporting_and_mask_paths_between_machines(tmp_path):
    """Try-out 82, F2: ``log.*`` changes no training (rank 0 reports): not compared. Between machines a local path
    is not compared (each node mounts files where it does); a hub id, a preset, ``pystdlib`` and every other key
    are, and so are the command's flags."""
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
            "log.level=DEBUG",
        ],
    )
    settings = rank_settings(cfg, resume=True)
    assert settings["data.source"] == str(corpus) and not any(k.startswith("log.") for k in settings)
    assert settings["train.lr"] == 0.002 and settings["flag.resume"] is True
    view = masked(settings)
    assert view["data.source"] == LOCAL_PATH and view["run.output_dir"] == LOCAL_PATH
    assert view["model.teacher"] == "Qwen/Qwen2.5-1.5B" and view["model.student"] == "preset:llama-micro"
    assert masked(rank_settings(load_config(None, ["data.source=pystdlib"])))["data.source"] == "pystdlib"


def test_differences_compare_paths_on_one_machine_and_other_keys_everywhere():
    """Try-out 82, F1: another ``teacher.cache_dir`` on a rank of rank 0's machine broke the cache build ("rank 1
    has not run"): on one machine paths are compared as given, between machines masked."""
    a = {"train.lr": 0.001, "teacher.cache_dir": "/c"}
    other_dir = {"train.lr": 0.001, "teacher.cache_dir": "/elsewhere"}
    assert _differences(["n0", "n0"], [a, other_dir]) == [("teacher.cache_dir", 0, "/c", 1, "/elsewhere")]
    assert _differences(["n0", "n1"], [a, other_dir]) == []  # another machine mounts it elsewhere
    # ranks 2 and 3 on a second machine: compared with rank 2 as given, with rank 0 masked
    assert _differences(["n0", "n0", "n1", "n1"], [a, a, other_dir, a]) == [
        ("teacher.cache_dir", 2, "/elsewhere", 3, "/c")
    ]
    hot = {"train.lr": 0.002, "teacher.cache_dir": "/elsewhere"}
    assert _differences(["n0", "n1"], [a, hot]) == [("train.lr", 0, "0.001", 1, "0.002")]
    assert _differences(["n0", "n0"], [{"a": 1}, {"a": 1, "c": True}]) == [("c", 0, "(unset)", 1, "true")]
    # try-out 83, F1: on one machine a path beside a non-path shows as given, and '' as ""
    unset_dir = {"train.lr": 0.001, "teacher.cache_dir": ""}
    assert _differences(["n0", "n0"], [unset_dir, other_dir]) == [
        ("teacher.cache_dir", 0, '""', 1, "/elsewhere")
    ]
    assert _differences(["n0", "n1"], [unset_dir, other_dir]) == [
        ("teacher.cache_dir", 0, '""', 1, "<a local path>")
    ]


def test_a_path_one_node_has_not_got_is_named_as_missing_there():
    """Try-out 151, F7: node 1 lacked ./teacher, which the same YAML names on both nodes: its unresolved 'teacher'
    beside node 0's resolved path was said as "given different settings ... every rank must run the same command
    line" (both did); named as a path missing on that node."""
    from ekd.train.same_settings import _missing_paths

    settings = [
        {"model.teacher": "/n0/teacher", "data.source": "/n0/data/train.jsonl", "train.lr": 0.001},
        {"model.teacher": "teacher", "data.source": "/n1/data/train.jsonl", "train.lr": 0.002},
    ]
    differing = _differences(["a", "b"], settings)
    assert [d[0] for d in differing] == ["model.teacher", "train.lr"]
    assert _missing_paths(differing, settings) == [("model.teacher", 1, "teacher", 0)]
    settings[1]["model.teacher"] = "other"  # another name, not the same path missing: a different setting
    assert _missing_paths(_differences(["a", "b"], settings), settings) == []
    # review 156, R9: an empty value, or a name that ends the path but is not a whole component of it
    for unset in ("", "her"):
        s2 = [{"teacher.cache_dir": "/n0/teacher"}, {"teacher.cache_dir": unset}]
        assert _missing_paths(_differences(["a", "b"], s2), s2) == [], unset
