"""Temperature policies (METHODS §5 "must hold" lines): constant, schedule, AdaKD IDTS, EGAD entropy map."""

from __future__ import annotations

import math
import re

import pytest
import torch

from ekd.config import MethodConfig
from ekd.selection.policies import StepContext
from ekd.selection.types import Selection
from ekd.temperature import build_temperature, fixed_tau, temperature_needs, temperatures

V = 50


def ctx(step: int = 0, total: int = 100) -> StepContext:
    return StepContext(step, total, torch.Generator().manual_seed(0), V)


def case(seed: int = 0, b: int = 3, t: int = 16):
    """(selection, stats, valid): selected rows (with a repeat), stats with garbage at unselected rows."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(b, t, generator=g) > 0.25
    rows = valid.reshape(-1).nonzero().squeeze(-1)
    rows = rows[torch.randperm(rows.numel(), generator=g)[: rows.numel() // 2]]
    rows = torch.cat([rows, rows[:1]])  # a repeated row, as pos_rs may draw
    stats = {
        "hellinger": torch.rand(b, t, generator=g),
        "teacher_entropy": torch.rand(b, t, generator=g) * math.log(V),
    }
    return Selection(rows, torch.ones(rows.numel()), b * t), stats, valid


def build(**kw):
    return build_temperature(MethodConfig(**kw), total_steps=100)


def test_registry_and_needs():
    assert set(temperatures.names()) == {"constant", "schedule", "idts", "entropy_map"}
    assert temperature_needs(MethodConfig(temperature="idts")) == {"hellinger"}
    assert temperature_needs(MethodConfig(temperature="entropy_map")) == {"teacher_entropy"}
    assert temperature_needs(MethodConfig(temperature="constant")) == set()
    with pytest.raises(ValueError, match="did you mean 'idts'"):
        build(temperature="idt")


def test_constant_temperature():
    sel, stats, valid = case()
    tau = build(temperature="constant", kd_temperature=2.5)(sel, stats, valid, ctx())
    assert tau.shape == (sel.count,) and tau.dtype == torch.float32 and not tau.requires_grad
    assert torch.all(tau == 2.5)


def test_schedule_holds_then_goes_linearly_to_the_end_value():
    sel, stats, valid = case()
    policy = build(
        temperature="schedule", kd_temperature=2.0, temperature_end=1.0, temperature_hold_fraction=0.2
    )
    expected = {0: 2.0, 20: 2.0, 60: 1.5, 100: 1.0, 150: 1.0}
    for step, want in expected.items():
        tau = policy(sel, stats, valid, ctx(step))
        assert torch.allclose(tau, torch.full_like(tau, want)), step
    assert policy.diagnostics()["select/tau_schedule"] == pytest.approx(1.0)


FIXED_OR_NOT = {
    "constant": dict(temperature="constant", kd_temperature=2.5),
    "schedule-1-to-1": dict(temperature="schedule", kd_temperature=1.0, temperature_end=1.0),
    "schedule-held": dict(
        temperature="schedule", kd_temperature=2.0, temperature_end=1.0, temperature_hold_fraction=1
    ),
    "schedule-2-to-1": dict(temperature="schedule", kd_temperature=2.0, temperature_end=1.0),
    "idts": dict(temperature="idts"),
    "entropy_map": dict(temperature="entropy_map"),
}


@pytest.mark.parametrize("kw", FIXED_OR_NOT.values(), ids=FIXED_OR_NOT)
def test_fixed_tau_is_the_one_tau_the_policy_gives_every_token_of_every_step(kw):
    """``fixed_tau`` (what a cache made at one τ may serve) says τ exactly when the policy gives that τ to every
    token at every step, and None when some token or step gets another."""
    sel, stats, valid = case()
    policy = build(**kw)
    seen = {float(t) for step in (0, 10, 50, 90, 100) for t in policy(sel, stats, valid, ctx(step))}
    tau = fixed_tau(MethodConfig(**kw))
    assert (seen == {tau}) if tau is not None else len(seen) > 1, (tau, seen)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_idts_is_exactly_the_adakd_formula(seed):
    sel, stats, valid = case(seed)
    policy = build(temperature="idts", kd_temperature=1.5, idts_strength=0.5)
    tau = policy(sel, stats, valid, ctx())
    s = stats["hellinger"].reshape(-1)[sel.rows].double().clamp_min(1e-8)
    median = torch.median(s)  # over the SELECTED tokens only (lower middle value for an even count)
    want = 1.5 * torch.exp(-0.5 * torch.tanh(torch.log(s / median)))
    torch.testing.assert_close(tau.double(), want, rtol=1e-6, atol=1e-6)
    # hard tokens (above the median) get a low τ, easy ones a high τ
    assert torch.all(tau[s > median] < 1.5) and torch.all(tau[s < median] > 1.5)
    torch.testing.assert_close(tau[s == median], torch.full_like(tau[s == median], 1.5))
    assert torch.all((tau >= 1.5 * math.exp(-0.5) - 1e-6) & (tau <= 1.5 * math.exp(0.5) + 1e-6))
    # positions that are not selected do not influence the median
    other = dict(stats, hellinger=stats["hellinger"].clone())
    unselected = torch.ones(valid.numel(), dtype=torch.bool)
    unselected[sel.rows] = False
    other["hellinger"].view(-1)[unselected] = 100.0
    torch.testing.assert_close(policy(sel, other, valid, ctx()), tau)


def test_idts_clamps_zero_scores_and_handles_no_selection():
    policy = build(temperature="idts")
    stats = {"hellinger": torch.tensor([[0.0, 0.0, 0.2, 0.4]])}
    sel = Selection(torch.tensor([0, 1, 2, 3]), torch.ones(4), 4)
    tau = policy(sel, stats, torch.ones(1, 4, dtype=torch.bool), ctx())
    assert torch.isfinite(tau).all()
    s = torch.tensor([1e-8, 1e-8, 0.2, 0.4], dtype=torch.float64)
    torch.testing.assert_close(
        tau.double(), torch.exp(-0.5 * torch.tanh(torch.log(s / 1e-8))), rtol=1e-6, atol=1e-6
    )
    empty = Selection(torch.zeros(0, dtype=torch.long), torch.zeros(0), 4)
    assert policy(empty, stats, torch.ones(1, 4, dtype=torch.bool), ctx()).shape == (0,)
    with pytest.raises(ValueError, match="temperature_needs"):
        policy(sel, {}, torch.ones(1, 4, dtype=torch.bool), ctx())


def test_idts_logs_the_global_median_on_a_rank_that_selected_nothing(monkeypatch):
    """review 136, R2: rank 0 (which writes the log) kept an earlier step's median when its own selection was empty
    and another rank's was not (LATF's batch-wide top-r under torchrun); NaN where no rank selected a row."""
    import ekd.temperature as temperature_mod

    policy = build(temperature="idts")
    stats = {"hellinger": torch.tensor([[0.1, 0.1, 0.9]])}
    valid = torch.ones(1, 3, dtype=torch.bool)
    other_rank = {"s": torch.tensor([0.1, 0.1])}
    monkeypatch.setattr(temperature_mod, "all_gather_1d", lambda s: torch.cat([s, other_rank["s"]]))
    policy(Selection(torch.tensor([0, 1]), torch.ones(2), 3), stats, valid, ctx())
    assert policy.diagnostics()["select/idts_median_hellinger"] == pytest.approx(0.1)
    other_rank["s"] = torch.tensor([0.8, 0.8, 0.8])
    empty = Selection(torch.zeros(0, dtype=torch.long), torch.zeros(0), 3)
    assert policy(empty, stats, valid, ctx()).shape == (0,)
    assert policy.diagnostics()["select/idts_median_hellinger"] == pytest.approx(0.8)  # was 0.1
    other_rank["s"] = torch.zeros(0)
    policy(empty, stats, valid, ctx())
    assert math.isnan(policy.diagnostics()["select/idts_median_hellinger"])


@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
def test_entropy_map_is_monotone_in_the_set_direction(direction):
    policy = build(
        temperature="entropy_map", entropy_tau_min=1.0, entropy_tau_max=3.0, entropy_direction=direction
    )
    h = torch.linspace(0.0, math.log(V), 11)[None, :]  # (1, 11) teacher entropies from 0 to log V
    sel = Selection(torch.arange(11), torch.ones(11), 11)
    tau = policy(sel, {"teacher_entropy": h}, torch.ones(1, 11, dtype=torch.bool), ctx())
    steps = tau[1:] - tau[:-1]
    if direction == "increasing":
        assert torch.all(steps > 0) and tau[0] == pytest.approx(1.0) and tau[-1] == pytest.approx(3.0)
    else:
        assert torch.all(steps < 0) and tau[0] == pytest.approx(3.0) and tau[-1] == pytest.approx(1.0)
    g = h[0].double() / math.log(V)
    g = g if direction == "increasing" else 1 - g
    torch.testing.assert_close(tau.double(), 1.0 + 2.0 * g, rtol=1e-6, atol=1e-6)


def test_temperatures_are_detached_and_per_selected_row():
    sel, stats, valid = case(3)
    stats = {k: v.clone().requires_grad_(True) for k, v in stats.items()}
    for name in temperatures.names():
        tau = build(temperature=name)(sel, stats, valid, ctx(10))
        assert tau.shape == (sel.count,) and tau.dtype == torch.float32 and not tau.requires_grad, name
        assert torch.all(tau > 0)
        assert isinstance(build(temperature=name).state_dict(), dict)


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(temperature="constant", kd_temperature=1e-9), "method.kd_temperature"),
        (dict(temperature="constant", kd_temperature=1e3), "method.kd_temperature"),
        (dict(temperature="schedule", kd_temperature=2.0, temperature_end=0.01), "method.temperature_end"),
        (
            dict(temperature="entropy_map", entropy_tau_min=0.05, entropy_tau_max=2.0),
            "method.entropy_tau_min",
        ),
        (
            dict(temperature="entropy_map", entropy_tau_min=1.0, entropy_tau_max=101.0),
            "method.entropy_tau_max",
        ),
        (dict(temperature="idts", kd_temperature=1.0, idts_strength=2.4), "method.idts_strength"),
        (dict(temperature="idts", kd_temperature=50.0, idts_strength=1.0), "method.idts_strength"),
        (dict(temperature="idts", kd_temperature=1.0, idts_strength=math.nan), "method.idts_strength"),
    ],
)
def test_every_policy_refuses_a_tau_outside_the_kd_range(kw, key):
    """A policy built without config validation (library use) refuses τ outside [0.1, 100] as the config does:
    τ = 1e-9 trained on a KD loss of ~4e-10, i.e. learned nothing from the teacher."""
    from ekd.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(key)) as e:
        build(**kw)
    assert "0.1" in str(e.value) and "100" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("lo_hi", [(0.1, 0.1), (100.0, 100.0)])
def test_the_kd_range_edges_are_accepted_by_every_policy(lo_hi):
    lo, hi = lo_hi
    sel, stats, valid = case()
    for kw in (
        dict(temperature="constant", kd_temperature=lo),
        dict(temperature="schedule", kd_temperature=lo, temperature_end=hi),
        dict(temperature="entropy_map", entropy_tau_min=lo, entropy_tau_max=hi),
        dict(temperature="idts", kd_temperature=lo, idts_strength=0.0),
    ):
        tau = build(**kw)(sel, stats, valid, ctx(step=50))
        assert torch.all((tau >= lo * (1 - 1e-6)) & (tau <= hi * (1 + 1e-6))), kw
    # IDTS at its widest: c = ln 10 around τ_base = 1 reaches 0.1 and 10 (ŝ = ±1 once tanh saturates)
    tau = build(temperature="idts", kd_temperature=1.0, idts_strength=math.log(10))(sel, stats, valid, ctx())
    assert tau.min() >= 0.1 * (1 - 1e-6) and tau.max() <= 10 * (1 + 1e-6)


def test_a_schedule_held_past_the_runs_last_step_is_one_tau_in_that_run():
    """try-out 30: a schedule 1 → 2 held for 95% of a 10-step run never leaves τ = 1 (u ≤ 0.9), yet was refused
    from a cache as changing τ over the steps; over 30 steps it does leave it."""
    kw = dict(temperature="schedule", kd_temperature=1.0, temperature_end=2.0, temperature_hold_fraction=0.95)
    sel, stats, valid = case()
    ten = build_temperature(MethodConfig(**kw), total_steps=10)
    assert {float(t) for s in range(10) for t in ten(sel, stats, valid, ctx(s, 10))} == {1.0}
    assert fixed_tau(MethodConfig(**kw), 10) == 1.0
    assert fixed_tau(MethodConfig(**kw), 30) is None and fixed_tau(MethodConfig(**kw)) is None


def test_a_refused_schedule_says_the_longest_run_it_holds_tau0_in():
    """try-out 32: `--resume` to 40 steps was refused naming only the length; the run resumes up to 20."""
    from ekd.temperature import varying_tau

    kw = dict(temperature="schedule", kd_temperature=1.0, temperature_end=2.0, temperature_hold_fraction=0.95)
    assert varying_tau(MethodConfig(**kw), 40) == (
        "method.temperature=schedule changes τ over the steps of train.max_steps=40 (1.0 → 2.0; it holds τ0 in "
        "runs of at most 20 steps)"
    )
    assert fixed_tau(MethodConfig(**kw), 20) == 1.0 and fixed_tau(MethodConfig(**kw), 21) is None
