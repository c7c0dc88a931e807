"""The embedded default run (``ekd demo`` / ``make demo``): no network, tiny models, the builtin corpus.

    ekd demo [--quick] [--methods ce,kd,sekd] [--seeds 3] [--from-scratch] [--out runs/demo]

1. ``pystdlib``: the Python standard library source of this interpreter, split by module into train and a
   held-out in-distribution eval set; shifted eval sets are the interpreter's test suite and the English
   docstrings of the held-out modules.
2. A byte-level BPE tokenizer is trained on the train split (cached in ``<out>/tokenizer``).
3. A small teacher (``preset:llama-small``) is pre-trained with CE (cached in ``<out>/teacher`` and reused
   while the demo settings are unchanged).
4. The student (``preset:llama-tiny``) is pre-trained with CE (cached in ``<out>/student-init``), as the
   papers distill pre-trained students; ``--from-scratch`` starts every student from random weights instead.
5. Each method distills that student at equal budget (same data, steps, learning rate), with ``--seeds N``
   seeds each; runs are evaluated and compared (``ekd compare``: mean ± std over seeds, paired differences
   against ``kd`` and ``ce``), the papers' claims are checked one by one (:mod:`ekd.eval.claims`; with
   ``--quick``, the claims its methods cannot check are one line), and ``<out>/report.md``,
   ``<out>/compare/`` and ``<out>/plots/`` are written. Under the results table: each eval set's documents and
   scored tokens; a set of fewer than ``ekd.eval.report.SMALL_EVAL_DOCUMENTS`` documents is marked tiny.

The demo corpus has one training split, so the student's CE pre-training ("general") and the
distillation ("target") read the same text; the pre-training stops well before the student converges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ekd.config import Config, load_config
from ekd.errors import EkdError
from ekd.eval.report import TINY_MARK, sizes_note, tiny_sets
from ekd.io import make_dirs
from ekd.json_words import value_kind
from ekd.train.checkpoint import atomic_write_text
from ekd.words import counted

log = logging.getLogger(__name__)

# default comparison at equal budget; every other registered preset is available with --methods
DEFAULT_METHODS = [
    "ce",
    "kd",
    "rkl",
    "jsd",  # baselines (dense, all positions)
    "sekd",
    "gls",
    "egad",
    "adakd",
    "atkd",
    "random_pos",  # where / at what temperature
    "topk",
    "topk_ghost",
    "rskd",
    "ekd",
    "sekd3x",  # how: sparse targets (sekd3x from the offline cache)
    "egad_nocurriculum",  # ablation for the EGAD claim
]
QUICK_METHODS = ["ce", "kd", "sekd", "rskd"]
QUICK_NOTE = (
    "--quick is a smoke test of the pipeline (a smaller teacher, corpus and eval sample, "
    "a few hundred steps): its figures do not rank the methods; `ekd demo` (`make demo`) does."
)
CACHED_METHODS = {"sekd3x"}  # trained from the demo's RS cache (teacher.source=cache)
# demo-only ablations: name → (preset, overrides)
VARIANTS = {
    # EGAD without its curriculum: the curriculum's end state (teacher-entropy top 50% per sequence), same
    # entropy-mapped τ and feature branch
    "egad_nocurriculum": ("egad", ["method.policy=topk"]),
}


@dataclass(frozen=True)
class DemoBudget:
    max_chars: int  # characters of stdlib source read for training
    bpe_vocab: int
    block_length: int
    teacher_steps: int
    student_steps: int
    student_pretrain_steps: int
    micro_batch: int
    max_eval_blocks: int
    task_items: tuple[int, int] = (100, 40)  # downstream items: (multiple choice, generation)


FULL = DemoBudget(
    max_chars=4_000_000,
    bpe_vocab=2048,
    block_length=128,
    # on 2 idle cores: 1000/200/400 took 19 min 50 s, 700/130/300 15 min 48 s (2026-12-01); the target is 15
    teacher_steps=600,
    student_steps=110,
    student_pretrain_steps=300,
    micro_batch=16,
    max_eval_blocks=48,
)
QUICK = DemoBudget(
    max_chars=1_500_000,
    bpe_vocab=1024,
    block_length=96,
    teacher_steps=350,
    student_steps=100,
    student_pretrain_steps=200,
    micro_batch=16,
    max_eval_blocks=16,
    task_items=(60, 20),
)


def warmup_steps(steps: int) -> int:
    """The demo's linear warm-up for a run of ``steps``: 10 steps, at most half the run."""
    return min(10, steps // 2)


def base_overrides(out: Path, b: DemoBudget) -> list[str]:
    """The demo config, shared by teacher pre-training and every student (equal budget)."""
    return [
        "data.source=pystdlib",
        f"data.max_chars={b.max_chars}",
        f"data.block_length={b.block_length}",
        f"data.max_eval_blocks={b.max_eval_blocks}",
        f"train.micro_batch_size={b.micro_batch}",
        "train.lr=3e-3",
        f"train.warmup_steps={warmup_steps(b.student_steps)}",
        "train.max_grad_norm=1.0",
        "eval.batch_size=16",
        "log.progress=false",
        "log.tensorboard=false",
        f"run.output_dir={out / 'runs'}",
    ]


def _signature(b: DemoBudget) -> str:
    import sys

    return hashlib.sha256(json.dumps([b.__dict__, sys.version, "v1"], sort_keys=True).encode()).hexdigest()[
        :16
    ]


def _pretrain_once(
    out: Path, b: DemoBudget, fresh: bool, role: str, target: Path, steps: int, extra: list[str]
) -> Path:
    """CE-train ``role`` for ``steps`` and copy its student to ``target``, unless ``target`` holds the result
    of the same budget already (its ``ekd_demo.json`` stamp); returns ``target``."""
    from ekd.train.trainer import train

    stamp = target / "ekd_demo.json"
    sig = _signature(b) + ("" if role == "teacher" else f"-{role}")
    if not fresh and _read_stamp(stamp, f"training the {role} again").get("signature") == sig:
        print(f"{role}: reusing {target}")
        return target
    t0 = time.perf_counter()
    cfg = load_config(
        overrides=base_overrides(out, b)
        + [f"run.name={role}-pretrain", "method=ce", f"train.max_steps={steps}", "eval.teacher=false"]
        + ["eval.plots=false", *extra]
    )
    result = train(cfg, overwrite=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(result.run_dir / "student", target)
    if role == "teacher":
        shutil.copytree(result.run_dir / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    atomic_write_text(stamp, json.dumps({"signature": sig, "eval": result.eval, "steps": steps}, indent=2))
    ppl = result.eval.get("eval", {}).get("ppl", float("nan"))
    print(
        f"{role}: pre-trained with CE {counted(steps, 'step')} in {time.perf_counter() - t0:.0f}s "
        f"(held-out ppl {ppl:.2f})"
    )
    return target


def pretrain_teacher(out: Path, b: DemoBudget, fresh: bool) -> Path:
    """Train the tokenizer and the demo teacher once; reuse them while the budget is unchanged."""
    extra = [  # the one run that trains the tokenizer: the others read it (try-out 133, F4: 17 warnings of the key)
        "model.student=preset:llama-small",
        "model.tokenizer=train_bpe",
        f"model.bpe_vocab_size={b.bpe_vocab}",
        "train.lr=2e-3",
    ]
    return _pretrain_once(out, b, fresh, "teacher", out / "teacher", b.teacher_steps, extra)


def pretrain_student(out: Path, b: DemoBudget, fresh: bool) -> Path:
    """CE pre-training of the demo student (``preset:llama-tiny``) on the teacher's tokenizer; reused while
    the budget is unchanged. Every method then starts from this checkpoint."""
    extra = ["model.student=preset:llama-tiny", f"model.tokenizer={out / 'teacher'}"]
    return _pretrain_once(out, b, fresh, "student", out / "student-init", b.student_pretrain_steps, extra)


def student_config(
    out: Path,
    b: DemoBudget,
    method: str,
    steps: int,
    seed: int = 0,
    run_name: str = "",
    pretrained: bool = False,
    tasks: tuple[str, ...] = (),
) -> Config:
    preset, variant = VARIANTS.get(method, (method, []))
    extra = (
        ["teacher.source=cache", f"teacher.cache_dir={demo_cache_dir(out, seed)}"]
        if method in CACHED_METHODS
        else []
    )
    if tasks:  # the teacher's and the initial student's results are computed once, shared by every run
        extra += [
            f"eval.tasks=[{','.join(tasks)}]",
            f"eval.tasks_dir={out / 'tasks'}",
            f"eval.tasks_cache_dir={out / 'tasks-cache'}",
            "eval.tasks_max_new_tokens=10",  # the completion is one identifier (≤ 20 characters)
        ]
    student = str(out / "student-init") if pretrained else "preset:llama-tiny"
    return load_config(
        overrides=base_overrides(out, b)
        + [
            f"run.name={run_name or method}",
            f"run.seed={seed}",
            f"method={preset}",
            f"model.student={student}",
            f"model.teacher={out / 'teacher'}",
            f"model.tokenizer={out / 'teacher'}",
            f"train.max_steps={steps}",
            f"train.warmup_steps={warmup_steps(steps)}",  # --steps may be shorter than the budget's warm-up
            "eval.teacher_metrics=false",  # the teacher's own figures come from its pre-training run
        ]
        + variant
        + extra
    )


def write_demo_tasks(out: Path, b: DemoBudget) -> tuple[str, ...]:
    """The downstream task set (:mod:`ekd.eval.stdlib_tasks`) from the held-out stdlib modules, written to
    ``<out>/tasks`` with choices length-matched under the teacher's tokenizer (``<out>/teacher``, shared by
    every student); () with a note when lm-eval is not installed."""
    from ekd.data.pystdlib import pystdlib_splits
    from ekd.errors import EkdError
    from ekd.eval.stdlib_tasks import hf_token_counter, write_stdlib_tasks
    from ekd.eval.tasks import require_lm_eval

    try:
        require_lm_eval(import_now=False)
    except EkdError as e:
        print(f"downstream tasks: skipped ({e})")
        return ()
    from transformers import AutoTokenizer

    docs = pystdlib_splits(max_chars=b.max_chars, names=["eval"])["eval"]
    n_mc, n_gen = b.task_items
    count_tokens = hf_token_counter(AutoTokenizer.from_pretrained(out / "teacher"))
    return write_stdlib_tasks(docs, out / "tasks", out / "tasks-hf-cache", count_tokens, n_mc, n_gen)


def demo_cache_dir(out: Path, seed: int) -> Path:
    """The demo's RS cache of seed ``seed``: ``cache/`` for seed 0, ``cache-s<seed>/`` for the others (RS draws
    follow ``run.seed``, so each seed reads its own cache; ``--seeds 2`` stopped at seed 1's cached run)."""
    return out / ("cache" if seed == 0 else f"cache-s{seed}")


def build_demo_cache(out: Path, b: DemoBudget, steps: int, fresh: bool, seed: int = 0) -> dict:
    """The offline RS cache (N=50, all positions) of the demo teacher for seed ``seed``, for the cached presets."""
    from ekd.teacher.cache import CacheError, CacheReader, build_cache

    cfg = student_config(out, b, "sekd3x", steps, seed)
    t0 = time.perf_counter()
    try:
        directory = build_cache(cfg, overwrite=fresh, measure_forward=False)
    except CacheError as e:  # the demo owns its cache: one from another ekd version or config is rebuilt
        print(f"cache: {e} — rebuilding the demo cache")
        directory = build_cache(cfg, overwrite=True, measure_forward=False)
    info = CacheReader(directory).info()
    print(
        f"cache: {demo_cache_dir(out, seed)} ready in {time.perf_counter() - t0:.0f}s — {info['bytes_per_position']:.1f} B/position, "
        f"{info['entries_per_position']:.1f} ids/position"
    )
    return info


def run_demo(
    out: Path,
    quick: bool = False,
    methods: list[str] | None = None,
    steps: int | None = None,
    fresh: bool = False,
    budget: DemoBudget | None = None,
    seeds: int = 1,
    from_scratch: bool = False,
    tasks: bool = True,
) -> list[dict]:
    """Pre-train (or reuse) the teacher and the student, distill one student per method and seed, print and
    write the comparison and the claims table.

    ``budget`` replaces the FULL/QUICK budget (tests use a tiny one). Returns one row per run."""
    from ekd.methods import presets
    from ekd.train.prepare import prepare_data
    from ekd.train.trainer import train

    t0 = time.perf_counter()
    b = budget or (QUICK if quick else FULL)
    methods = methods or (QUICK_METHODS if quick else DEFAULT_METHODS)
    if seeds < 1:
        from ekd.config import ConfigError

        raise ConfigError(f"ekd demo --seeds must be ≥ 1, got {seeds}")
    if steps is not None and steps < 1:
        from ekd.config import ConfigError

        raise ConfigError(f"ekd demo --steps must be ≥ 1, got {steps}")
    for m in methods:
        if m not in presets and m not in VARIANTS:
            from ekd.config import ConfigError

            raise ConfigError(f"ekd demo --methods: {presets.unknown_message(m)}")
    make_dirs(out)
    pretrain_teacher(out, b, fresh)
    if not from_scratch:
        pretrain_student(out, b, fresh)
    steps = steps or b.student_steps
    rows: list[dict] = []
    data = None
    cached = CACHED_METHODS & set(methods)
    cache_infos = {s: build_demo_cache(out, b, steps, fresh, s) if cached else None for s in range(seeds)}
    task_names = write_demo_tasks(out, b) if tasks else ()
    for seed in range(seeds):
        for method in methods:
            name = method if seeds == 1 else f"{method}-s{seed}"
            cfg = student_config(out, b, method, steps, seed, name, not from_scratch, task_names)
            if data is None:
                data = prepare_data(cfg, cfg.run_dir)  # tokenized once, shared by every student (equal data)
            print(f"distilling: {name} ({counted(steps, 'step')})")
            result = train(cfg, overwrite=True, data=data)
            row = _row(method, result, cfg, cache_infos[seed], data.vocab_size)
            rows.append(row | {"seed": seed, "run": name})
    teacher_row = _teacher_row(out)
    sizes = eval_set_sizes(data.blocks) if data is not None else {}
    firsts = [r for r in rows if r["seed"] == 0]
    start_row = _student_init_row(out / "runs" / firsts[0]["run"]) if firsts else {}
    table = comparison_table(firsts, teacher_row, sizes, start_row)
    if quick:  # try-out 21: ce ahead of its teacher and of kd read as a finding
        table += "\n\n" + QUICK_NOTE
    compare_md, claims_md = compare_and_claims(out, rows, methods if quick else None, sizes)
    print()
    print(table if seeds == 1 else compare_md + "\n" + eval_sets_note(sizes))
    tasks_md, tasks_wall = downstream_table(out, rows)
    if tasks_md:
        from ekd.eval.task_metrics import GAP_NOTE

        tasks_md += (
            f"\n\nLocal lm-eval tasks from held-out stdlib modules ({', '.join(task_names)}; "
            f"`ekd.eval.stdlib_tasks`); the students' task evaluation took {tasks_wall:.0f}s in all. "
            f"Chance: 0.25 name choice acc. {GAP_NOTE} Here both are taken on the mean over the tasks."
        )
        print()
        print(tasks_md)
    print()
    print(claims_md)
    write_demo_report(
        out,
        b,
        rows,
        teacher_row,
        table,
        time.perf_counter() - t0,
        compare_md,
        claims_md,
        seeds,
        from_scratch,
        tasks_md,
    )
    print(f"\nreport: {out / 'report.md'}   total wall time {time.perf_counter() - t0:.0f}s")
    return rows


def compare_and_claims(
    out: Path,
    rows: list[dict],
    quick_methods: list[str] | None = None,
    sizes: dict[str, tuple[int, int]] | None = None,
) -> tuple[str, str]:
    """``ekd compare`` over the demo's runs (into ``<out>/compare``) and the claims table, as markdown.

    ``quick_methods``: the methods ``--quick`` ran; the claims they cannot check ("not run") are then one line
    naming them instead of one row each (``claims.json`` keeps every claim). ``sizes``: the eval sets' sizes
    (:func:`eval_set_sizes`); the claims are judged on the ID set, so a tiny one marks their verdicts."""
    from ekd.eval.claims import check_claims
    from ekd.eval.compare import compare_runs, group_runs, markdown, read_run

    run_dirs = [out / "runs" / r["run"] for r in rows]
    summary = compare_runs(run_dirs, out / "compare", baselines=("kd", "ce"))
    groups = group_runs([read_run(d) for d in run_dirs])
    for g in groups:  # label groups by the demo's method names (variants share a preset)
        g.label = next(r["method"] for r in rows if out / "runs" / r["run"] == g.runs[0].run_dir)
    claims = check_claims(groups)
    atomic_write_text(out / "claims.json", json.dumps([c.__dict__ for c in claims], indent=2))
    return markdown(summary), claims_markdown(claims, quick_methods, tiny_id=bool(_tiny(sizes or {}, "eval")))


def claims_markdown(claims: list, quick_methods: list[str] | None = None, tiny_id: bool = False) -> str:
    """The claims table; with ``quick_methods`` (what ``--quick`` ran) the claims it could not check are one
    line that names those methods instead of a "not run" row each. ``tiny_id``: the ID set the claims are
    judged on is tiny (:func:`eval_sets_note`): every verdict taken there carries its mark, and a line says so."""
    from dataclasses import replace

    from ekd.eval.claims import claims_table

    notes = []
    if tiny_id and any(not c.verdict.startswith("not run") for c in claims):
        claims = [
            c if c.verdict.startswith("not run") else replace(c, verdict=c.verdict + TINY_MARK)
            for c in claims
        ]
        notes.append(
            f"{TINY_MARK} judged on the tiny ID set (see the eval sets above): the verdict describes those few "
            "texts, weak evidence either way."
        )
    checked = [
        c for c in claims if c.verdict != "not run"
    ]  # "not run (reason)" rows stay: not --quick's doing
    if quick_methods is not None and len(checked) < len(claims):
        notes.append(
            f"{len(claims) - len(checked)} of {counted(len(claims), 'claim')} not run: this --quick demo trains "
            f"{', '.join(quick_methods)}; the other claims need the methods of a full `ekd demo`."
        )
        claims = checked
    # a blank line after the table: markdown would read a line right below it as one more row
    table = [claims_table(claims).rstrip("\n")] if claims else []
    return "\n\n".join(table + (["\n".join(notes)] if notes else []))


def _row(method: str, result, cfg: Config, cache_info: dict | None, vocab_size: int) -> dict:
    from ekd.eval.compare import measured_rs_unique_ids, metric_rows

    ev = result.eval
    row = {"method": method, "wall_s": result.wall_time, "kd_pct": 100.0 * result.kd_fraction}
    drawn = measured_rs_unique_ids(metric_rows(result.run_dir))  # online RS: the ids it drew
    row["bytes_per_token"] = teacher_bytes_per_token(cfg, result.kd_fraction, cache_info, vocab_size, drawn)
    for name, metrics in ev.items():
        if name.endswith("/teacher"):
            continue
        for k in ("ppl", "acc", "ece", "kl", "agree"):
            if k in metrics:
                row[f"{name}/{k}"] = metrics[k]
    row["_teacher"] = {name[: -len("/teacher")]: m for name, m in ev.items() if name.endswith("/teacher")}
    return row


def _student_init_row(run_dir: Path) -> dict:
    """The starting student's figures (eval.json's ``student_init``, ``eval.student_init``) as a table row: every
    student of a seed starts from the same weights (the CE-pre-trained student, or the preset built from the seed),
    so the first run's are every run's. {} when it records none."""
    from ekd.eval.eval_json import student_init_rows_of

    starts = student_init_rows_of(run_dir)
    row = {
        f"{name.rpartition('/')[0]}/{k}": figures[k]  # <set>/student_init → <set>/<metric>
        for name, figures in starts.items()
        for k in ("ppl", "acc", "ece", "kl", "agree")
        if k in figures
    }
    return {"method": "(student init)", **row} if row else {}


def _read_stamp(path: Path, otherwise: str) -> dict:
    """A pre-trained model's ``ekd_demo.json`` (its budget's signature and its figures); {} when there is none,
    or one that cannot be read (said, with ``otherwise``: what the demo does without it — a damaged stamp was a
    traceback)."""
    from ekd.json_record import read_json_record

    try:
        saved = read_json_record(path, otherwise)
    except EkdError as e:
        print(e)
        return {}
    if saved is not None and not isinstance(saved, dict):
        print(f"{path} is not a demo stamp (a JSON {value_kind(saved)}); {otherwise}")
    return saved if isinstance(saved, dict) else {}


def _teacher_row(out: Path) -> dict:
    """The teacher's own figures, from its pre-training run."""
    saved = _read_stamp(out / "teacher" / "ekd_demo.json", "the table leaves out the teacher's figures")
    if not saved:
        return {}
    t = {"method": "(teacher)"}
    for name, m in (saved.get("eval") or {}).items():
        if "/" not in name:
            for k in ("ppl", "acc", "ece"):
                if k in m:
                    t[f"{name}/{k}"] = m[k]
    return t


def teacher_bytes_per_token(
    cfg: Config,
    kd_fraction: float,
    cache_info: dict | None,
    vocab_size: int,
    rs_unique_ids: float | None = None,
) -> float:
    """Teacher supervision per training token, in bytes: measured on disk for a cache; otherwise what the
    targets would take stored compactly, times the fraction of KD positions ``kd_fraction``.

    Per KD position, over the tokenizer's ``vocab_size`` V tokens: dense, fp16 logits (2·V); top-K, K ids of
    ⌈log2 V⌉ bits + fp16 probabilities; RS with N = ``method.rs_samples`` draws, u ids of ⌈log2 V⌉ bits + a
    count up to N (N.bit_length() bits: 6 at N=50, 3 at N=5; + an fp32 weight p/r per id with a proposal,
    ``method.rs_proposal_power`` ≠ 1, as the cache stores). u is ``rs_unique_ids``, the mean number of
    distinct ids the run drew per KD position (its ``train/rs_unique_ids``, :func:`ekd.eval.compare.
    measured_rs_unique_ids`); a run of an older ekd that did not log it gets an estimate,
    :func:`estimated_rs_unique_ids` (never more than N). The cache format is tighter than this fixed-width
    size (Elias–Fano ids, gamma-coded counts)."""
    m = cfg.method
    if cfg.teacher.source == "cache" and cache_info:
        return float(cache_info["bytes_per_token"])
    if m.kd_weight == 0 or m.preset == "ce":
        return 0.0
    id_bits = max(1, math.ceil(math.log2(vocab_size)))
    if m.target == "dense":
        per_position = 2.0 * vocab_size
    elif m.target == "topk":
        per_position = m.topk * (id_bits + 16) / 8
    else:
        unique = rs_unique_ids if rs_unique_ids is not None else estimated_rs_unique_ids(m.rs_samples)
        weight_bits = 0 if m.rs_proposal_power == 1.0 else 32
        per_position = unique * (id_bits + m.rs_samples.bit_length() + weight_bits) / 8
    return per_position * kd_fraction


RS_SUPPORT = 13
"""The fallback's teacher: its mass spread evenly over this many ids (12.8 distinct ids in N=50 draws, the
figure ekd assumed for every N before runs logged ``train/rs_unique_ids``)."""


def estimated_rs_unique_ids(num_samples: int) -> float:
    """Expected distinct ids in N draws from a teacher spread evenly over :data:`RS_SUPPORT` ids,
    S·(1 − (1 − 1/S)^N): a guess for a run that did not record what it drew, never above N (4.3 at N=5, 12.8 at
    N=50). A real teacher's figure depends on its entropy and τ (try-out 12: 5.45 at τ=1, 22.96 at τ=2, N=50)."""
    return RS_SUPPORT * (1.0 - (1.0 - 1.0 / RS_SUPPORT) ** num_samples)


def eval_set_sizes(blocks: dict) -> dict[str, tuple[int, int]]:
    """Eval set → (documents, scored tokens) of the packed blocks every student is evaluated on."""
    return {name: (b.num_documents, b.num_targets) for name, b in blocks.items() if name != "train"}


def _tiny(sizes: dict[str, tuple[int, int]], name: str) -> str:
    return TINY_MARK if name in tiny_sets(sizes) else ""


def eval_sets_note(sizes: dict[str, tuple[int, int]]) -> str:
    """The line under the demo's tables with each eval set's size (:func:`ekd.eval.report.sizes_note`, the ID
    set named as such)."""
    return sizes_note(sizes, {"eval": "ID (eval)"})


WALL_NOTE = (
    "wall s: each student's run (training and evaluation), one after another on this machine under whatever else it"
    " ran at the time; a speed comparison is `make bench`'s side-by-side ratios (docs/benchmarks.md)."
)


def comparison_columns(rows: list[dict], sizes: dict[str, tuple[int, int]] | None = None) -> list:
    """The results table's columns; headers of a tiny eval set (:func:`eval_sets_note`) carry its mark."""
    sizes = sizes or {}
    shifted = sorted({k.split("/")[0] for r in rows for k in r if k.startswith("shift_")})
    mark = _tiny(sizes, "eval")
    return [
        ("method", "method", ""),
        ("eval/ppl", f"ID ppl{mark}", ".2f"),
        *[(f"{s}/ppl", f"{s} ppl{_tiny(sizes, s)}", ".2f") for s in shifted],
        ("eval/acc", f"ID acc{mark}", ".3f"),
        ("eval/ece", f"ID ECE %{mark}", ".2f"),
        ("eval/kl", f"KL(t‖s){mark}", ".3f"),
        ("eval/agree", f"top-1 agree{mark}", ".3f"),
        ("kd_pct", "KD pos %", ".1f"),
        ("bytes_per_token", "teacher B/token", ".1f"),
        ("wall_s", "wall s", ".0f"),
    ]


def comparison_table(
    rows: list[dict],
    teacher_row: dict,
    sizes: dict[str, tuple[int, int]] | None = None,
    start_row: dict | None = None,
) -> str:
    """The results table (markdown) with its footnotes: which perplexity, and the eval sets' sizes; the starting
    student's row (``start_row``, where given) and the teacher's under the students'."""
    from ekd.eval import results_table
    from ekd.eval.report import ppl_note

    cols = comparison_columns(rows, sizes)
    wall = WALL_NOTE if any(r.get("wall_s") is not None for r in rows) else ""
    notes = [n for n in (ppl_note(cols), eval_sets_note(sizes or {}), wall) if n]
    below = [r for r in (start_row, teacher_row) if r]
    return results_table(rows + below, cols) + "\n" + "\n\n".join(notes)


def downstream_table(out: Path, rows: list[dict]) -> tuple[str, float]:
    """The downstream task table of the seed-0 runs (from each run's eval.json), with the teacher and the
    initial student; and the students' total task-evaluation wall time (s). ("", 0) without task results."""
    from ekd.eval import results_table
    from ekd.eval.eval_json import read_eval_json
    from ekd.train.task_evaluation import gap_cell

    table_rows, wall, reference = [], 0.0, None
    for r in (r for r in rows if r.get("seed", 0) == 0):
        section = (read_eval_json(out / "runs" / r["run"]) or {}).get("tasks")  # one reader (review 132, R2)
        if not section:
            continue
        reference = reference or section
        student = section["student"]
        summary = section.get("summary", {})
        gap = gap_cell(
            summary.get("gap_closed", {}),
            summary.get("gap_within_noise", []),
            "in_distribution",
            summary.get("gap_teacher_below_init", []),
        )
        row = _task_row(r["method"], student, gap)
        row["wall"] = sum(t.get("wall_s") or 0.0 for t in student.values())
        wall += row["wall"]
        table_rows.append(row)
    if not table_rows:
        return "", 0.0
    for role, label in (("student_init", "(student init)"), ("teacher", "(teacher)")):
        if reference.get(role):
            table_rows.append(_task_row(label, reference[role], None))
    from ekd.eval.stdlib_tasks import NAME_CHOICE, NAME_COMPLETE
    from ekd.eval.task_metrics import format_gap

    cols = [
        ("method", "method", ""),
        (f"{NAME_CHOICE}/value", "name choice acc", ".3f"),
        (f"{NAME_CHOICE}/ece", "MC-ECE %", ".2f"),
        (f"{NAME_COMPLETE}/value", "name completion EM", ".3f"),
        ("gap", "gap closed", lambda v: format_gap(v, ".2f")),
        ("wall", "task eval s", ".1f"),
    ]
    return results_table(table_rows, cols), wall


def _task_row(label: str, results: dict, gap: float | str | None) -> dict:
    row: dict = {"method": label, "gap": gap}
    for task, r in results.items():
        row[f"{task}/value"] = r.get("value")
        row[f"{task}/ece"] = r.get("ece")
    return row


def write_demo_report(
    out: Path,
    b: DemoBudget,
    rows: list[dict],
    teacher_row: dict,
    table: str,
    wall: float,
    compare_md: str = "",
    claims_md: str = "",
    seeds: int = 1,
    from_scratch: bool = False,
    tasks_md: str = "",
) -> None:
    from ekd.eval import plot_metric_bars, write_report

    plots = out / "plots"
    make_dirs(plots)
    first = [r for r in rows if r.get("seed", 0) == 0]
    by_method = {r["method"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in first}
    for metric in ("eval/kl", "eval/ppl", "eval/ece"):
        if any(metric in m for m in by_method.values()):
            plot_metric_bars(
                {k: m for k, m in by_method.items() if metric in m},
                metric,
                plots / f"{metric.replace('/', '_')}.png",
            )
    for r in first:  # copy each student's reliability diagram next to the report
        src = out / "runs" / r.get("run", r["method"]) / "plots" / "reliability-eval.png"
        if src.is_file():
            shutil.copy(src, plots / f"reliability-{r['method']}.png")
    ce = next((r for r in first if r["method"] == "ce"), None)
    notes = []
    # review 128, R6: no comparison
    if ce is not None and "eval/kl" in ce and not math.isfinite(ce["eval/kl"]):
        notes.append(
            "`ce`'s KL to the teacher on the held-out set is not finite: no student is compared with it."
        )
    elif ce is not None and "eval/kl" in ce:
        better = [r["method"] for r in first if r["method"] != "ce" and r.get("eval/kl", 1e9) < ce["eval/kl"]]
        notes.append(
            f"Students with lower KL to the teacher than `ce` on the held-out set: {', '.join(better) or 'none'}."
        )
    teacher_ppl = ((ce or {}).get("_teacher") or {}).get("eval", {}).get("ppl") if ce is not None else None
    if ce is not None and isinstance(teacher_ppl, float) and teacher_ppl >= ce.get("eval/ppl", math.inf):
        notes.append(  # try-out 133, F3: every student lost to ce, the report never said why
            f"The teacher is no better than the CE student on the held-out set (ppl {teacher_ppl:.2f} vs "
            f"{ce['eval/ppl']:.2f}): distilling it cannot beat CE at this budget, and the claims below compare "
            "methods taught by it."
        )
    start = (
        "every student starts from random weights (--from-scratch)"
        if from_scratch
        else "every student starts from the same CE-pre-trained student "
        f"({counted(b.student_pretrain_steps, 'step')})"
    )
    setup = (
        f"Protocol: {start}; {counted(seeds, 'seed')} per method. "
        f"Budget: {counted(b.student_steps, 'step')} × {counted(b.micro_batch, 'block')} × "
        f"{counted(b.block_length, 'token')} per student, "
        f"teacher pre-trained {counted(b.teacher_steps, 'step')}; BPE vocabulary {b.bpe_vocab}; "
        f"train text ≤ {b.max_chars:,} characters of the standard library. Total wall time {wall:.0f}s."
    )
    figures = "\n".join(f"![{p.stem}](plots/{p.name})" for p in sorted(plots.glob("*.png")))
    write_report(
        out,
        "ekd demo",
        [
            ("Setup", setup),
            ("Results (seed 0)", table + "".join("\n\n" + n for n in notes)),
            *([("Downstream tasks (seed 0)", tasks_md)] if tasks_md else []),
            *([("Over seeds (ekd compare)", compare_md)] if compare_md and seeds > 1 else []),
            *([("The papers' claims on this run", claims_md)] if claims_md else []),
            (
                "Plots",
                figures
                + "\n\nComparison plots (Pareto frontier, reliability, KL by entropy): `compare/plots/`.",
            ),
        ],
    )
    atomic_write_text(
        out / "results.json",
        json.dumps([{k: v for k, v in r.items() if k != "_teacher"} for r in rows] + [teacher_row], indent=2),
    )
