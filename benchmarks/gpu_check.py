"""The GPU checks of issue 16, prepared so that a lent device's minutes are not lost (≈ 5–8 min on one H100/H200).

1. Loss head at Liger's published setting (V=151,936, N=8,192, student H=896, teacher H=1536, bf16 inputs,
   JSD β=0.5, forward + backward): bare GEMMs (floor), ekd fused head (chunk 256 and 1024), naive full logits
   (TRL's ``generalized_jsd_loss``), Liger's Triton ``LigerFusedLinearJSD`` and its chunked
   ``LigerFusedLinearJSDLoss`` (torch.compile). Time (CUDA-synchronized, fastest of 3 after a warm-up), peak
   allocated memory, time ÷ bare GEMMs, loss value (all must agree).
2. One optimizer step of a Qwen2.5-0.5B-shape student with a Qwen2.5-1.5B-shape teacher (random weights, the
   trainer's precision: fp32 student under bf16 autocast, bf16 teacher; B=4 × T=1024, fused AdamW) through
   ``ekd.train.trainer.forward_backward`` for ``kd`` and ``sekd``: tokens/s, peak memory.
3. The model probes ``ekd distill`` runs before training, on both presets in fp32/bf16/fp16 × sdpa/eager, with
   TF32 on as a GPU run sets it: any refusal is a false positive.

Every case is guarded: an error or out-of-memory is recorded and the script goes on. Results go to
``$OUT/gpu_check.json`` (rewritten after each case) and ``$OUT/gpu_check.md``.

    python -m benchmarks.gpu_check                 # on the device machine, with $OUT set
    python -m benchmarks.gpu_check --dry --out /tmp/g   # tiny shapes on CPU: checks that nothing crashes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.head_loss import BETA, generalized_jsd_loss


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn: Callable[[], float], dev: torch.device, repeats: int) -> dict:
    """Warm-up call, then ``repeats`` timed calls: fastest time, peak memory of the timed calls, last value."""
    t0 = time.perf_counter()
    value = fn()  # warm-up: compilation, autotuning, allocator
    _sync(dev)
    first = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda" else float("nan")
    return {"time_s": min(times), "first_s": first, "peak_mb": peak, "value": float(value)}


def head_cases(
    v: int, n: int, ds: int, dt: int, dev: torch.device, dtype: torch.dtype
) -> dict[str, Callable]:
    """name → a forward+backward closure returning the loss (mean over N) on shared inputs."""
    g = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(n, ds, generator=g).to(dev, dtype).requires_grad_(True)  # (N, Ds)
    w = (torch.randn(v, ds, generator=g) * 0.05).to(dev, dtype).requires_grad_(True)  # (V, Ds)
    ht = torch.randn(n, dt, generator=g).to(dev, dtype)  # (N, Dt)
    wt = (torch.randn(v, dt, generator=g) * 0.05).to(dev, dtype)  # (V, Dt)

    def zero_grads() -> None:
        h.grad = None
        w.grad = None

    def gemm() -> float:
        zs = h.detach() @ w.detach().t()  # (N, V) student logits
        zt = ht @ wt.t()  # (N, V) teacher logits
        _ = zs @ w.detach()  # (N, Ds) grad_hidden (zs stands in for the logit gradient)
        _ = zs.t() @ h.detach()  # (V, Ds) grad_W
        del zt
        return 0.0

    def ekd(chunk: int, compile: bool = False) -> Callable[[], float]:
        from ekd.losses.divergences import make_divergence
        from ekd.losses.head_loss import kd_loss_sum
        from ekd.losses.targets import DenseTarget, Head

        ones = torch.ones(n, device=dev)
        div = make_divergence("jsd", jsd_beta=BETA)

        def step() -> float:
            zero_grads()
            target = DenseTarget(ht, Head(wt))
            loss = kd_loss_sum(h, Head(w), target, ones, ones, div, chunk_size=chunk, compile=compile) / n
            loss.backward()
            return float(loss.detach())

        return step

    def naive() -> float:
        zero_grads()
        with torch.no_grad():
            zt = (ht @ wt.t()).float().unsqueeze(0)  # (1, N, V)
        loss = generalized_jsd_loss((h @ w.t()).float().unsqueeze(0), zt, beta=BETA)
        loss.backward()
        return float(loss.detach())

    def liger_triton() -> float:
        from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

        zero_grads()
        loss = LigerFusedLinearJSD(jsd_beta=BETA)(h, w, ht, wt, None)  # shift_labels None: every row
        loss.backward()
        return float(loss.detach())

    def liger_chunked() -> float:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        zero_grads()
        fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA, compiled=True)
        loss = fn(h, w, ht, wt, torch.zeros(n, dtype=torch.long, device=dev))
        loss.backward()
        return float(loss.detach())

    return {
        "gemm": gemm,
        "ekd_chunk256": ekd(256),
        "ekd_chunk1024": ekd(1024),
        "ekd_chunk1024_compiled": ekd(1024, compile=True),  # train.compile=true
        "ekd_chunk4096_compiled": ekd(4096, compile=True),
        "naive_trl_gjsd": naive,
        "liger_triton": liger_triton,
        "liger_chunked_compiled": liger_chunked,
    }


def build_pair(
    student: str, teacher: str, v: int, dev: torch.device, amp
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The preset pair as the trainer holds it on a GPU: fp32 student (AdamW master weights, bodies and heads
    under bf16 autocast), teacher in bf16 (``model.teacher_dtype=auto``). Built on ``dev`` directly: a
    1.5B-shape random init on the device takes a second, on 16 CPU cores half a minute."""
    from ekd.models.load import build_preset

    with dev:
        s = build_preset(student, v, eos_token_id=0, seed=0).train()
        tm = build_preset(teacher, v, eos_token_id=0, seed=1).to(amp or torch.float32).eval()
    return s, tm


def step_case(
    method: str,
    s,
    tm,
    v: int,
    b: int,
    t: int,
    dev: torch.device,
    amp,
    repeats: int = 3,
    chunk: int = 0,
    compile: bool = False,
) -> dict:
    """One ekd optimizer step (``forward_backward`` + the trainer's fused AdamW) of the pair, in the trainer's
    precision (``amp``: the autocast dtype, None for fp32): tokens/s and peak memory. ``chunk`` 0: the
    trainer's automatic rows on ``dev``; ``compile``: ``train.compile``."""
    from ekd.config import load_config
    from ekd.data.collate import Batch
    from ekd.losses.chunked import auto_chunk_rows
    from ekd.teacher.online import OnlineTeacher
    from ekd.train.method_parts import MethodParts
    from ekd.train.optim import build_optimizer
    from ekd.train.trainer import forward_backward

    chunk = chunk or auto_chunk_rows(v, dev.type)
    overrides = [
        f"method={method}",
        f"train.head_chunk_size={chunk}",
        f"train.compile={str(compile).lower()}",
    ]
    cfg = load_config(None, [*overrides, "train.max_steps=100", "train.warmup_steps=0"])
    parts = MethodParts.build(cfg, total_steps=100)
    source = OnlineTeacher(tm, v, chunk, amp)
    opt = build_optimizer(list(s.named_parameters()), cfg)  # the trainer's (fused) AdamW
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, v, (b, t + 1), generator=g)  # (B, T+1)
    batch = Batch(
        input_ids=ids[:, :-1].contiguous().to(dev),  # (B, T)
        labels=ids[:, 1:].contiguous().to(dev),  # (B, T)
        attention_mask=torch.ones(b, t, dtype=torch.long, device=dev),
        sample_ids=torch.arange(b, device=dev),
    )
    run_dir = Path(os.environ.get("OUT", "/tmp")) / "gpu_check_run"
    state = {"i": 0}

    def step() -> float:
        loss, *_ = forward_backward([batch], s, source, parts, state["i"], cfg, v, amp, run_dir)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["i"] += 1
        return float(loss)

    r = _timed(step, dev, repeats=repeats)
    return {**r, "tokens_per_s": b * t / r["time_s"], "chunk": chunk, "compile": compile}


def family_models(v: int) -> dict[str, Callable[[], torch.nn.Module]]:
    """Small random models of the families whose heads are not plain h·Wᵀ or whose layout differs from the
    presets' (Gemma-2's soft-cap, Cohere's logit scale, Phi's head bias, GPT-2's tied head and learned
    positions), each also with its head ×16 (a trained model's logits: the probes' second pass is then skipped
    and the 16-bit factor test sees large logits)."""
    from transformers import (
        CohereConfig,
        CohereForCausalLM,
        Gemma2Config,
        Gemma2ForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        PhiConfig,
        PhiForCausalLM,
    )

    common = dict(
        vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    builds = {
        "gemma2-softcap30": lambda: Gemma2ForCausalLM(
            Gemma2Config(**common, num_key_value_heads=2, head_dim=16, final_logit_softcapping=30.0)
        ),
        "cohere-scale0.25": lambda: CohereForCausalLM(
            CohereConfig(**common, num_key_value_heads=2, logit_scale=0.25)
        ),
        "phi-head-bias": lambda: PhiForCausalLM(PhiConfig(**common)),
        "gpt2-tied": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=64, n_layer=2, n_head=4)),
    }
    out: dict[str, Callable[[], torch.nn.Module]] = {}
    for name, build in builds.items():
        out[name] = build
        out[f"{name}-head×16"] = lambda build=build: _grown_head(build(), 16.0)
    return out


def _grown_head(model: torch.nn.Module, factor: float) -> torch.nn.Module:
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)
    return model


def probe_cases(presets: tuple[str, ...], v: int, dev: torch.device) -> dict:
    """The model probes ``ekd distill`` runs before training (``check_output_head``,
    ``check_document_isolation``) on each preset and each of :func:`family_models` in every dtype and attention
    kernel, under the settings a run leaves (TF32 on a GPU): "ok", "n/a" (a kernel the model lacks), or the
    refusal (a refusal of any of these is a false positive to fix)."""
    from ekd.models.isolation import check_document_isolation
    from ekd.models.load import build_preset, check_output_head
    from ekd.train.precision import enable_tf32

    enable_tf32("auto", dev)  # as ekd distill does before it loads the models
    builds = {p: (lambda p=p: build_preset(p, v, eos_token_id=0, seed=0)) for p in presets}
    builds.update(family_models(v))
    found = {}
    for name, build in builds.items():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for attn in ("sdpa", "eager"):
                key = f"{name}/{str(dtype).removeprefix('torch.')}/{attn}"
                torch.manual_seed(0)
                with dev:
                    model = build().to(dtype)
                try:
                    model.set_attn_implementation(attn)
                except ValueError:  # Gemma-2 has no sdpa kernel in transformers
                    found[key] = "n/a (no such attention kernel for this model)"
                    continue
                try:
                    check_output_head(model, v, "student")
                    check_document_isolation(model, v, "student")
                    found[key] = "ok"
                except Exception as e:  # noqa: BLE001 — a refusal: recorded
                    found[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dry", action="store_true", help="tiny shapes on CPU (a crash check, seconds)")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="results folder ($OUT)")
    parser.add_argument(
        "--step-sweep",
        action="store_true",
        help="only the optimizer step: kd and sekd × chunk rows 256/1024 × train.compile off/on",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry:
        dev, dtype = torch.device("cpu"), torch.float32
        v, n, ds, dt = 512, 64, 32, 48
        pair, (b, t) = ("llama-micro", "llama-tiny"), (2, 16)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry for the CPU crash check")
        dev, dtype = torch.device("cuda"), torch.bfloat16
        v, n, ds, dt = 151_936, 8192, 896, 1536
        pair, (b, t) = ("qwen2.5-0.5b-shape", "qwen2.5-1.5b-shape"), (4, 1024)
    results: dict = {
        "machine": {
            "device": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "dry": args.dry,
        },
        "head": {"V": v, "N": n, "dtype": str(dtype)},
        "step": {"student": pair[0], "teacher": pair[1], "B": b, "T": t},
    }

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))

    repeats = 1 if args.dry else 3
    if args.step_sweep:
        return step_sweep(results, pair, v, b, t, dev, out, repeats, compile_too=not args.dry)
    t_start = time.perf_counter()
    for name, fn in head_cases(v, n, ds, dt, dev, dtype).items():
        if args.dry and name.endswith("_compiled"):
            results["head"][name] = {"error": "skipped in --dry (torch.compile takes minutes on a CPU)"}
            continue
        try:
            results["head"][name] = _timed(fn, dev, repeats=repeats)
        except Exception as e:  # noqa: BLE001 — OOM, a missing Liger, a Triton failure: record and go on
            results["head"][name] = {
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            }
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print(name, results["head"][name], flush=True)
        save()
    amp = None if args.dry else torch.bfloat16  # the trainer's train.precision=auto
    try:
        student, teacher = build_pair(*pair, v, dev, amp)
    except Exception as e:  # noqa: BLE001
        student = teacher = None
        results["step"]["build"] = {
            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        }
    for method in ("kd", "sekd") if student is not None else ():
        try:
            results["step"][method] = step_case(method, student, teacher, v, b, t, dev, amp, repeats)
        except Exception as e:  # noqa: BLE001
            results["step"][method] = {
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            }
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print(method, results["step"][method], flush=True)
        save()
    del student, teacher
    results["probes"] = probe_cases(pair, v, dev)
    print("probes", results["probes"], flush=True)
    save()
    results["seconds"] = time.perf_counter() - t_start
    save()
    (out / "gpu_check.md").write_text("\n".join(report(results)) + "\n")
    return 0


def step_sweep(
    results: dict, pair, v: int, b: int, t: int, dev: torch.device, out: Path, repeats: int, compile_too: bool
) -> int:
    """The whole step's chunk rows and ``train.compile`` on the device: ``$OUT/gpu_step_sweep.{json,md}``."""
    amp = torch.bfloat16 if dev.type == "cuda" else None
    student, teacher = build_pair(*pair, v, dev, amp)
    sweep = results["step"]["sweep"] = []
    for compile in (False, True) if compile_too else (False,):
        for chunk in (256, 1024):
            for method in ("kd", "sekd"):
                try:
                    r = step_case(method, student, teacher, v, b, t, dev, amp, repeats, chunk, compile)
                except Exception as e:  # noqa: BLE001
                    r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
                sweep.append({"method": method, "chunk": chunk, "compile": compile, **r})
                print(sweep[-1], flush=True)
                (out / "gpu_step_sweep.json").write_text(json.dumps(results, indent=1))
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    base = {(r["method"]): r for r in sweep if r["chunk"] == 256 and not r["compile"] and "time_s" in r}
    lines = [
        f"Device: {results['machine']['device']}, torch {results['machine']['torch']}; "
        f"{pair[0]} student, {pair[1]} teacher, B={b} × T={t}, V={v:,}",
        "",
        "| method | chunk rows | train.compile | step (s) | first step (s) | tokens/s | peak (MB) | time / chunk 256 eager |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in sweep:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['chunk']} | {r['compile']} | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['chunk']} | {r['compile']} | {r['time_s']:.3f} | {r['first_s']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['peak_mb']:.0f} | {_div(r, base.get(r['method'], {}), 'time_s')} |"
        )
    (out / "gpu_step_sweep.md").write_text("\n".join(lines) + "\n")
    return 0


def report(results: dict) -> list[str]:
    """Markdown tables of the results (ratios to the bare GEMMs and to ekd at chunk 256)."""
    head, step = results["head"], results["step"]
    gemm, ours = head.get("gemm", {}), head.get("ekd_chunk256", {})
    lines = [
        f"Device: {results['machine']['device']}, torch {results['machine']['torch']}"
        + (" — **dry run (CPU, tiny shapes)**" if results["machine"]["dry"] else ""),
        "",
        f"Loss head, V={head['V']:,}, N={head['N']:,}, {head['dtype']}, JSD β=0.5, forward + backward:",
        "",
        "| implementation | time (ms) | time / bare GEMMs | time / ekd | peak (MB) | peak / ekd | loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in head.items():
        if not isinstance(r, dict):
            continue
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {1000 * r['time_s']:.1f} | {_div(r, gemm, 'time_s')} | {_div(r, ours, 'time_s')} | "
            f"{r['peak_mb']:.0f} | {_div(r, ours, 'peak_mb')} | {r['value']:.6f} |"
        )
    lines += [
        "",
        f"Optimizer step, {step['student']} student, {step['teacher']} teacher, B={step['B']} × T={step['T']}:",
        "",
        "| method | time (s) | tokens/s | peak (MB) |",
        "|---|---:|---:|---:|",
    ]
    for method in ("kd", "sekd"):
        r = step.get(method, {})
        if "error" in r or not r:
            lines.append(f"| {method} | {r.get('error', 'not run')} | | |")
            continue
        lines.append(f"| {method} | {r['time_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['peak_mb']:.0f} |")
    lines += ["", f"sekd step / kd step: {_div(step.get('sekd', {}), step.get('kd', {}), 'time_s')}"]
    probes = results.get("probes", {})
    refused = {k: r for k, r in probes.items() if r != "ok"}
    lines += ["", f"Model probes under the run's settings: {len(probes) - len(refused)} of {len(probes)} ok"]
    lines += [f"- {k}: {r}" for k, r in refused.items()]
    return lines


def _div(a: dict, b: dict, key: str) -> str:
    x, y = a.get(key), b.get(key)
    return f"{x / y:.2f}" if x is not None and y and x == x and y == y else "—"


if __name__ == "__main__":
    raise SystemExit(main())
