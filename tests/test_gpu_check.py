"""The prepared GPU script (``benchmarks/gpu_check.py``) runs end to end in its tiny CPU ``--dry`` mode."""

from __future__ import annotations

import json

from benchmarks.gpu_check import main


def test_gpu_check_dry_run_writes_every_case(tmp_path):
    assert main(["--dry", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    head, step = results["head"], results["step"]
    for name in ("gemm", "ekd_chunk256", "ekd_chunk1024", "naive_trl_gjsd"):
        assert "time_s" in head[name], (name, head[name])
    # every implementation computes the same JSD (Liger's rows only where Liger is installed)
    losses = [r["value"] for k, r in head.items() if isinstance(r, dict) and "value" in r and k != "gemm"]
    assert len(losses) >= 3 and max(losses) - min(losses) < 1e-5 * max(losses)
    for method in ("kd", "sekd"):
        assert step[method]["tokens_per_s"] > 0 and step[method]["value"] > 0
    assert "| ekd_chunk256 |" in (tmp_path / "gpu_check.md").read_text()
    probes = results["probes"]  # the model probes under the run's settings: presets and other families
    assert {k.split("/")[0] for k in probes} >= {"llama-micro", "gemma2-softcap30-head×16", "phi-head-bias"}
    assert {v for k, v in probes.items() if not k.startswith("gemma2") or "/eager" in k} == {"ok"}


def test_gpu_check_step_sweep_dry_run_times_both_chunks_of_both_methods(tmp_path):
    assert main(["--dry", "--step-sweep", "--out", str(tmp_path)]) == 0
    sweep = json.loads((tmp_path / "gpu_step_sweep.json").read_text())["step"]["sweep"]
    assert {(r["method"], r["chunk"], r["compile"]) for r in sweep} == {
        (m, c, False) for m in ("kd", "sekd") for c in (256, 1024)
    }  # --dry leaves out train.compile (minutes on a CPU)
    assert all(r["tokens_per_s"] > 0 and r["first_s"] > 0 for r in sweep)
    assert "| kd | 1024 | False |" in (tmp_path / "gpu_step_sweep.md").read_text()
