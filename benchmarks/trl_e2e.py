"""One optimizer step of a whole distillation run, ekd side by side with TRL (issue 16, `make bench`).

Same student (``llama-tiny``, 2 × 64) and teacher (``llama-small``, 4 × 128) presets with random weights, same
token blocks (B sequences of T random ids), same divergence (forward KL = TRL's generalized JSD at β=0; JSD
β=0.5), off-policy, τ = 1, fp32 on CPU, the same ``torch.optim.AdamW``. A step = loss forward + backward +
optimizer step:

- ``trl_gkd``: ``trl.experimental.gkd.GKDTrainer.training_step`` with ``lmbda=0`` (no generation): full
  (B, T, V) logits of both models, ``generalized_jsd_loss``.
- ``trl_distill``: ``trl.DistillationTrainer.compute_loss`` (its chunked JSD over the completion) + backward;
  its ``training_step`` would also run its generation/buffering machinery, which off-policy data does not need.
- ``ekd``: ``ekd.train.trainer.forward_backward`` (the training loop's step) for ``kd``, ``jsd``, ``sekd``
  (online teacher) and ``sekd3x`` (RS N=50 targets read from a teacher cache built once beforehand; no teacher
  model in the process; the sample-selection pass that picks its batches is not part of the step).

TRL's loss is a mean over the positions ``labels[:, 1:]`` scores, i.e. T − 1 per sequence: ekd's labels mask
the last position, so both average over the same B·(T − 1) tokens and the first step's loss values must agree.

Each case runs in a fresh process (``benchmarks.measure``); time = fastest step after one warm-up step (which
also allocates the optimizer state); ``step_mb`` = resident-set high-water mark of a step above the resident set
before it (models, optimizer state and data excluded); ``rss_mb`` = the process's peak resident set (models,
libraries and all).

    python -m benchmarks.trl_e2e '{"impl": "trl_gkd", "div": "jsd", "v": 32768, "b": 2, "t": 256}'
    python -m benchmarks.trl_e2e --section --quick          # print the markdown section
    python -m benchmarks.trl_e2e --section --v 32768 151936 --repeats 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

STUDENT, TEACHER = "llama-tiny", "llama-small"
LOSS_TOLERANCE = 2e-5  # nats: first-step losses closer than this are the same loss (fp32 rounding)
EKD_METHODS = {"kd": "forward_kl", "jsd": "jsd", "sekd": "forward_kl", "sekd3x": "forward_kl"}
LABELS = {
    "trl_gkd": "TRL GKDTrainer (λ=0)",
    "trl_distill": "TRL DistillationTrainer",
    "ekd_kd": "ekd kd",
    "ekd_jsd": "ekd jsd",
    "ekd_sekd": "ekd sekd (online)",
    "ekd_sekd3x": "ekd sekd3x (cache)",
}


def _blocks(v: int, b: int, t: int):
    """(B, T) random ids in [1, V) and ekd's shifted labels (last position masked, as TRL's shift drops it)."""
    import torch

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, v, (b, t), generator=g)  # (B, T)
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]  # labels[:, i] = token after input i
    return ids, labels


def _models(v: int, need_teacher: bool = True):
    from ekd.models.load import build_preset

    student = build_preset(STUDENT, v, eos_token_id=0, seed=0).train()
    teacher = build_preset(TEACHER, v, eos_token_id=0, seed=1).eval() if need_teacher else None
    return student, teacher


def _tokenizer():
    """A one-token tokenizer: TRL's trainers only read its pad/eos ids (the data is already token ids)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({"<pad>": 0}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")


def _trl_args(cls, out: str, b: int, beta: float, **extra):
    return cls(
        output_dir=out,
        per_device_train_batch_size=b,
        learning_rate=1e-4,
        beta=beta,
        temperature=1.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_dropout=True,
        **extra,
    )


def trl_step(impl: str, div: str, v: int, b: int, t: int, out: str):
    """(step function returning the loss, trainable model) for a TRL trainer."""
    import torch
    from datasets import Dataset

    beta = 0.0 if div == "forward_kl" else 0.5  # TRL: β=0 is KL(teacher ‖ student)
    student, teacher = _models(v)
    ids, _ = _blocks(v, b, t)
    n_items = torch.tensor(float(b * (t - 1)))
    data = Dataset.from_dict({"input_ids": ids.tolist()})
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    if impl == "trl_gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = _trl_args(GKDConfig, out, b, beta, lmbda=0.0, seq_kd=False)
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            processing_class=_tokenizer(),
            data_collator=lambda x: x,
            optimizers=(optimizer, None),
        )
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

        def loss_backward() -> float:
            return float(trainer.training_step(trainer.model, dict(inputs), n_items))

    else:
        from trl import DistillationConfig, DistillationTrainer

        args = _trl_args(DistillationConfig, out, b, beta)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["x"] * b, "completion": ["y"] * b}),
            processing_class=_tokenizer(),
            optimizers=(optimizer, None),
        )
        inputs = {
            "prompt_ids": ids[:, :1],
            "prompt_mask": torch.ones_like(ids[:, :1]),
            "completion_ids": ids[:, 1:],  # (B, T − 1): every next-token position is scored
            "completion_mask": torch.ones_like(ids[:, 1:]),
        }

        def loss_backward() -> float:
            trainer.model.train()
            loss = trainer.compute_loss(trainer.model, dict(inputs), num_items_in_batch=n_items)
            loss.backward()
            return float(loss.detach())

    def step() -> float:
        loss = loss_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _cache(cfg, teacher, v: int, b: int, t: int, directory: str) -> None:
    """Write the teacher cache of the data block (RS N=50, ``ekd cache``'s write path)."""
    import torch

    from ekd.data.collate import collate
    from ekd.data.packing import PackedBlocks
    from ekd.models.load import output_head
    from ekd.teacher.cache import CacheWriter, make_signature
    from ekd.teacher.cache.build import write_batches
    from ekd.teacher.cache.entries import EntryOptions, build_chunk_rows, work_rows_for
    from ekd.teacher.cache.signature import PACKING_RULE
    from ekd.teacher.signal import TargetSpec

    ids, _ = _blocks(v, b, t)
    blocks = PackedBlocks(ids, torch.ones(b, t, dtype=torch.bool), torch.arange(b))
    signature = make_signature(
        teacher_id=f"preset:{TEACHER}",
        teacher_revision="random",
        tokenizer_hash="random-ids",
        data_fingerprint=blocks.fingerprint(),
        block_length=t,
        packing=PACKING_RULE,
        vocab_size=v,
        target="rs",
        rs_samples=cfg.method.rs_samples,
    )
    options = EntryOptions(
        spec=TargetSpec("rs", 0, "renormalize", cfg.method.rs_samples, 1.0, cfg.run.seed),
        chunk_rows=build_chunk_rows(v),
        work_rows=work_rows_for(torch.device("cpu"), v),
    )
    writer = CacheWriter(directory, signature, b, shard_samples=b)
    write_batches(
        writer, teacher, output_head(teacher, v), iter([collate(blocks, torch.arange(b))]), options, None
    )


def _cache_teacher(directory: str):
    """``CacheTeacher`` on the benchmark's cache. Its signature check (tokenizer, data files) is skipped: the
    blocks are random ids with no tokenizer or corpus; reading and decoding are those of training."""
    from collections import OrderedDict

    import torch

    from ekd.teacher.cache import CacheTeacher
    from ekd.teacher.cache.reader import CacheReader

    source = object.__new__(CacheTeacher)
    source.reader, source.device, source._memo, source._memo_size = (
        CacheReader(directory),
        torch.device("cpu"),
        OrderedDict(),
        16,
    )
    return source


def ekd_step(method: str, v: int, b: int, t: int, out: str):
    import torch

    from ekd.config import load_config
    from ekd.data.collate import Batch
    from ekd.losses.chunked import auto_chunk_rows
    from ekd.teacher.online import OnlineTeacher
    from ekd.train.method_parts import MethodParts
    from ekd.train.trainer import forward_backward

    chunk = auto_chunk_rows(v)
    cached = method == "sekd3x"
    overrides = [
        f"method={method}",
        "method.kd_temperature=1",
        f"train.head_chunk_size={chunk}",
        "train.max_steps=100",
        "train.warmup_steps=0",
    ]
    if cached:
        overrides += ["teacher.source=cache", f"teacher.cache_dir={out}/cache"]
    cfg = load_config(None, overrides)
    parts = MethodParts.build(cfg, total_steps=100)
    student, teacher = _models(v)
    if cached:
        _cache(cfg, teacher, v, b, t, f"{out}/cache")
        del teacher  # no teacher model in the process while training
        source = _cache_teacher(f"{out}/cache")
    else:
        source = OnlineTeacher(teacher, v, chunk)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    ids, labels = _blocks(v, b, t)
    batch = Batch(
        input_ids=ids, labels=labels, attention_mask=torch.ones_like(ids), sample_ids=torch.arange(b)
    )
    state = {"i": 0}

    def step() -> float:
        if cached:
            source._memo.clear()  # every step decodes its rows from the cache, as a new batch would
        loss, *_ = forward_backward([batch], student, source, parts, state["i"], cfg, v, None, Path(out))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["i"] += 1
        return float(loss)

    return step


def run(case: dict) -> dict:
    """One case in this process: first-step loss, fastest step, step peak and process peak memory."""
    import torch

    from benchmarks.measure import _status_mb, measure_call

    torch.manual_seed(0)
    impl, v, b, t = case["impl"], case["v"], case["b"], case["t"]
    with tempfile.TemporaryDirectory(prefix="ekd-e2e-") as out:
        if impl.startswith("trl"):
            step = trl_step(impl, case["div"], v, b, t, out)
        else:
            step = ekd_step(impl.removeprefix("ekd_"), v, b, t, out)
        first = step()  # warm-up: the loss at the initial weights; allocates the optimizer state
        box = {}
        repeats = case.get("repeats", 2)
        res = measure_call(
            lambda: box.update(loss=step()), repeats=repeats, min_seconds=3.0 if repeats > 1 else 0.0
        )
        step_mb = res.pop("peak_mb")
        return {
            **res,
            "step_mb": step_mb,
            "rss_mb": _status_mb("VmHWM"),
            "first_loss": first,
            "tokens": b * (t - 1),
        }


def _available() -> str | None:
    try:
        import trl  # noqa: F401
        from trl.experimental.gkd import GKDTrainer  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"TRL not installed ({type(e).__name__}); `make bench` installs trl==1.16.0 --no-deps"
    return None


def _has_distillation_trainer() -> bool:
    try:
        from trl import DistillationTrainer  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def section(
    quick: bool = False, vocabs: list[int] | None = None, repeats: int = 2, rounds: int = 1
) -> list[str]:
    """Markdown for the end-to-end section: per vocabulary, every contender, ratios to TRL GKD.

    ``vocabs``: default [32,768, 151,936] (quick: [8,192]); ``repeats``: timed steps after the warm-up;
    ``rounds``: ABBA rounds (each: every case in order, then in reverse order, each in a fresh process). The table
    shows each case's median pass; ratios are taken pass by pass and given as median [min, max].
    """
    from benchmarks.measure import run_case

    missing = _available()
    b, t = (2, 128) if quick else (2, 256)
    vocabs = vocabs or ([8192] if quick else [32_768, 151_936])
    trl_impls = ["trl_gkd"] + (["trl_distill"] if _has_distillation_trainer() else [])
    lines = [
        "## Whole step vs TRL (issue 16)",
        "",
        f"Student `{STUDENT}` (2 × 64), teacher `{TEACHER}` (4 × 128), random weights, B={b} × T={t} random ids"
        f" (B·(T−1) = {b * (t - 1)} scored tokens), fp32, CPU, τ=1, off-policy, one AdamW step; each case in a fresh"
        " process. Time = fastest step after a warm-up step; step peak = resident-set high-water mark of the step"
        " above the state before it; process peak = the whole process's (libraries, models, optimizer state)."
        f" TRL {_version('trl')}, transformers {_version('transformers')}, torch {_version('torch')}."
        " `python -m benchmarks.trl_e2e` (module docstring: what each contender's step is).",
        "",
    ]
    if missing:
        return lines + [missing]
    print("whole step vs TRL:", flush=True)
    rows = []
    for v in vocabs:
        cases = [(impl, div) for div in ("forward_kl", "jsd") for impl in trl_impls]
        cases += [(f"ekd_{method}", div) for method, div in EKD_METHODS.items()]
        runs: dict[tuple[str, str], list[dict]] = {c: [] for c in cases}
        for p in range(2 * rounds):  # ABBA: every pass in the reverse order of the one before
            for impl, div in cases if p % 2 == 0 else reversed(cases):
                r = run_case(
                    "benchmarks.trl_e2e",
                    {"impl": impl, "div": div, "v": v, "b": b, "t": t, "repeats": repeats},
                    3600,
                )
                runs[(impl, div)].append(r)
                _print(impl, div, v, r)
        rows.append((v, {c: _median_run(rs) for c, rs in runs.items()}, runs))
    lines += [
        "Each row is the case's pass of median time; the table's ratio columns divide the rows' numbers. The"
        " headline ratios below the table are the **median of per-pass ratios** (the same ABBA pass of both"
        " cases, so the load of each pass cancels), given as median [min, max]; they can differ from the table's"
        " ratio, by more on a busy machine (the [min, max] spread shows how busy).",
        "",
        "| V | divergence | step | first loss | time (s) | tokens/s | time / TRL GKD | step peak (MB) | step peak / TRL GKD | process peak (MB) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    checks, targets, lines_ratios = [], [], []
    for v, results, runs in rows:
        for (impl, div), r in results.items():
            ref = results.get(("trl_gkd", div), {})
            if "error" in r:
                lines.append(f"| {v:,} | {div} | {LABELS[impl]} | {r['error']} | | | | | | |")
                continue
            lines.append(
                f"| {v:,} | {div} | {LABELS[impl]} | {r['first_loss']:.6f} | {_sig(r['time_s'])} | "
                f"{r['tokens'] / r['time_s']:,.0f} | {_ratio(r, ref, 'time_s')} | {r['step_mb']:.0f} | "
                f"{_ratio(r, ref, 'step_mb')} | {r['rss_mb']:.0f} |"
            )
        for div, ekd_key in (("forward_kl", "ekd_kd"), ("jsd", "ekd_jsd")):
            same = [results.get((k, div), {}) for k in ("trl_gkd", "trl_distill", ekd_key)]
            losses = [r["first_loss"] for r in same if "first_loss" in r]
            if len(losses) > 1:
                checks.append((v, div, max(losses) / min(losses) - 1, max(losses) - min(losses)))
        kd, gkd = runs.get(("ekd_kd", "forward_kl"), []), runs.get(("trl_gkd", "forward_kl"), [])
        r_t, r_m = _pass_ratios(kd, gkd, "time_s"), _pass_ratios(kd, gkd, "step_mb")
        if r_t and r_m:
            targets.append((v, statistics.median(r_t), statistics.median(r_m)))
        for (a, b_), (c, d) in (
            (("ekd_kd", "forward_kl"), ("trl_gkd", "forward_kl")),
            (("ekd_jsd", "jsd"), ("trl_gkd", "jsd")),
            (("ekd_kd", "forward_kl"), ("trl_distill", "forward_kl")),
            (("ekd_sekd", "forward_kl"), ("ekd_kd", "forward_kl")),
            (("ekd_sekd3x", "forward_kl"), ("ekd_kd", "forward_kl")),
        ):
            spread = _spread(_pass_ratios(runs.get((a, b_), []), runs.get((c, d), []), "time_s"))
            if spread:
                lines_ratios.append(
                    f"- V={v:,}: {LABELS[a]} / {LABELS[c]} ({d}), time, median of per-pass ratios: {spread}"
                )
    lines += ["", *lines_ratios]
    for v, div, spread, gap in checks:
        lines.append(
            f"- first-step loss, V={v:,}, {div}: TRL and ekd agree to {gap:.1e} nats (relative {spread:.1e})"
            + (
                f" — the same loss (within {LOSS_TOLERANCE:.0e} nats{_fp32_note(v)})"
                if gap <= LOSS_TOLERANCE
                else " — **they differ: the timings compare different losses**"
            )
        )
    for v, r_t, r_m in targets:
        lines.append(
            f"- V={v:,}: ekd kd / TRL GKD (forward_kl), median of per-pass ratios: time **{r_t:.2f}**,"
            f" step peak **{r_m:.2f}**"
            + (
                f" (targets at V=151,936: ≤ 0.5 and ≤ 0.3 → {'met' if r_t <= 0.5 else '**missed**'},"
                f" {'met' if r_m <= 0.3 else '**missed**'})"
                if v == 151_936
                else ""
            )
        )
    return lines


def _median_run(runs: list[dict]) -> dict:
    """The run of median time among a case's passes (an error if every pass failed)."""
    ok = sorted((r for r in runs if "time_s" in r), key=lambda r: r["time_s"])
    return ok[(len(ok) - 1) // 2] if ok else (runs[0] if runs else {"error": "not run"})


def _pass_ratios(a: list[dict], b: list[dict], key: str) -> list[float]:
    """Ratios a/b of ``key`` pass by pass (the same pass of the ABBA order; passes where either failed skipped)."""
    return [x[key] / y[key] for x, y in zip(a, b, strict=False) if key in x and y.get(key)]


def _spread(rs: list[float]) -> str:
    """'**median** [min, max] over n passes' of per-pass ratios ('' if none)."""
    if not rs:
        return ""
    return f"**{statistics.median(rs):.2f}** [{min(rs):.2f}, {max(rs):.2f}] over {len(rs)} passes"


def _fp32_note(v: int) -> str:
    """Where the size of fp32 rounding is known (docs/benchmarks.md, "Numerics"): TRL GKD's stock log_softmax."""
    if v == 151_936:
        return "; TRL GKD's stock fp32 log_softmax alone errs by ~2e-5 at this V"
    return ""


def _sig(x: float) -> str:
    """3 significant figures, trailing zeros kept (0.0300); whole numbers from 100 up (no exponent)."""
    return f"{x:.0f}" if abs(x) >= 99.95 else f"{x:#.3g}"


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _ratio(a: dict, b: dict, key: str) -> str:
    return f"{a[key] / b[key]:.2f}" if key in a and b.get(key) else "—"


def _print(impl: str, div: str, v: int, r: dict) -> None:
    desc = f"{impl} {div} V={v}"
    info = (
        r.get("error")
        or f"loss {r['first_loss']:.5f}  {_sig(r['time_s'])} s  step {r['step_mb']:.0f} MB  rss {r['rss_mb']:.0f} MB"
    )
    print(f"  {desc:<36} {info}", flush=True)


def _case(text: str) -> dict:
    """A JSON case as ``benchmarks.measure.run_case`` passes it (argparse ``type``: errors become usage errors)."""
    try:
        case = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(case, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    missing = [k for k in ("impl", "v", "b", "t") if k not in case]
    if missing:
        raise argparse.ArgumentTypeError(f"missing {', '.join(missing)}: {text!r}")
    if case["impl"] not in LABELS:
        raise argparse.ArgumentTypeError(f"impl {case['impl']!r} is not one of {', '.join(LABELS)}")
    if case["impl"].startswith("trl") and case.get("div") not in ("forward_kl", "jsd"):
        raise argparse.ArgumentTypeError(f"a TRL case needs div forward_kl or jsd: {text!r}")
    return case


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {n}")
    return n


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.trl_e2e",
        description=__doc__.splitlines()[0],
        epilog="Either one JSON case (what benchmarks.measure.run_case runs, one per fresh process) or --section.",
    )
    ap.add_argument(
        "case",
        nargs="?",
        type=_case,
        help='one case as JSON, e.g. \'{"impl": "ekd_kd", '
        '"v": 8192, "b": 2, "t": 128}\'; prints its result as one JSON line',
    )
    ap.add_argument("--section", action="store_true", help="run every case and print the markdown section")
    ap.add_argument("--quick", action="store_true", help="with --section: B=2 × T=128, V=8,192 by default")
    ap.add_argument("--v", type=_positive, nargs="+", metavar="V", help="with --section: the vocabularies")
    ap.add_argument("--repeats", type=_positive, help="with --section: timed steps after the warm-up (2)")
    ap.add_argument("--rounds", type=_positive, help="with --section: ABBA rounds (1)")
    return ap


def main(argv: list[str]) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    section_only = [
        f"--{k}" for k in ("quick", "v", "repeats", "rounds") if getattr(args, k) not in (None, False)
    ]
    if args.section:
        if args.case is not None:
            ap.error("give either a JSON case or --section, not both")
        repeats = 2 if args.repeats is None else args.repeats
        rounds = 1 if args.rounds is None else args.rounds
        print("\n".join(section(quick=args.quick, vocabs=args.v, repeats=repeats, rounds=rounds)))
        return 0
    if section_only:
        ap.error(f"{', '.join(section_only)}: only with --section")
    if args.case is None:
        ap.error("give a JSON case or --section")
    print(json.dumps(run(args.case)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
