"""``ekd cache``: build, inspect and verify an offline teacher cache.

    ekd cache CONFIG [key=value ...] [--overwrite]    build (or resume) the cache in teacher.cache_dir
    ekd cache info DIR                                 samples, positions, bytes/position and /token, signature
    ekd cache verify DIR                               every shard's sha256 and every record's CRC-32 and parse
    ekd cache import SRC [MORE.yaml ...] [key=value ...] --config CONFIG --out DIR [--text-column text --tokens-column input_ids
                     --ids-column target_token_ids --logprobs-column logprobs]
                                                       top-K cache from another tool's teacher logprobs

Problems print one line ``ekd: error: ...`` (a ``CacheError``) and exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ekd.errors import EkdError
from ekd.io import writing
from ekd.teacher.cache.manifest import rebuild_advice, refuse_a_file, refuse_missing_cache
from ekd.words import counted

INSPECT = ("info", "verify")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):  # a signature's description (data_settings, teacher_files): key=value pairs,
        # each value as JSON (exact, one line: a template's newlines escaped; try-out 64, F9)
        return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in value.items())
    return str(value)


def format_info(info: dict) -> str:
    """``CacheReader.info()`` as aligned ``key  value`` lines, layout and signature indented below."""
    lines = []
    width = max((len(k) for k, v in info.items() if not isinstance(v, dict)), default=0)
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            inner = max((len(k) for k in value), default=0)
            lines.extend(f"  {k:<{inner}} {_fmt(v)}" for k, v in value.items())
        else:
            lines.append(f"{key:<{width}} {_fmt(value)}")
    return "\n".join(lines)


def format_summary(s: dict) -> str:
    """``build.summary()`` as the lines ``ekd cache`` prints (once, on rank 0): the whole cache's sizes and the
    build's samples, seconds and throughput, all ranks together."""
    ratio = s["throughput_ratio"]
    build = s["build_samples_per_s"]
    throughput = (
        f"{build:,.1f} samples/s = {ratio:.2f}× the teacher's forward-only {s['forward_samples_per_s']:,.1f} samples/s"
        if ratio is not None
        else "n/a (nothing left to build)"
    )
    load, cores = s.get("load_at_start"), s.get("cores", 1)
    if ratio is not None and load is not None and load >= 0.5 * cores:  # an idle machine has load ≈ 0
        throughput += (
            f" (not a clean measurement: load average {load:.1f} on {cores} core{'s' if cores > 1 else ''} "
            "before the build began; the two are timed one after the other)"
        )
    processes = f"{s['world_size']} process{'es' if s['world_size'] > 1 else ''}"
    head = (
        f"teacher cache written to {s['directory']} ({processes})"
        if s["samples_built"]
        else f"teacher cache {s['directory']} was complete: nothing to build ({processes})"
    )
    return "\n".join(
        [
            head,
            f"  samples            {s['samples']:,} ({s['samples_built']:,} built now in {s['build_seconds']:.1f}s)",
            f"  positions          {s['positions']:,} ({s['entries_per_position']:.2f} entries/position)",
            f"  bytes/position     {s['bytes_per_position']:.2f}",
            f"  bytes/train token  {s['bytes_per_token']:.2f}",
            f"  on disk            {s['bytes_on_disk']:,} bytes (shards {s['shard_bytes']:,}: what bytes/position and "
            "/train token count; the rest is the manifest and the teacher's kept files)",
            f"  build throughput   {throughput}",
        ]
    )


def add_import_arguments(parser) -> None:
    """The options of ``ekd cache import`` (on the ``ekd cache`` parser)."""
    g = parser.add_argument_group("ekd cache import SRC")
    g.add_argument(
        "--config", dest="import_config", default="", help="the training config (data, tokenizer, K)"
    )
    g.add_argument("--out", dest="import_out", default="", help="cache directory to write")
    g.add_argument(
        "--text-column",
        default="",
        help="SRC column of the document text, or of a chat row's messages (default data.text_field or data.messages_field)",
    )
    g.add_argument(
        "--tokens-column", default=None, help="SRC token ids (default input_ids or prompt_token_ids)"
    )
    g.add_argument(
        "--ids-column", default=None, help="SRC top-K token ids per position (default target_token_ids, …)"
    )
    g.add_argument(
        "--logprobs-column",
        default=None,
        help="SRC top-K logprobs per position, or vLLM prompt_logprobs (default: the first of prompt_logprobs, "
        "target_logprobs, logprobs, topk_logprobs, top_logprobs it holds)",
    )


def run_import(args) -> int:
    """``ekd cache import SRC [MORE.yaml ...] [key=value ...] --config CONFIG --out DIR``: more YAML files are
    merged after CONFIG, in order, as ``ekd distill``'s and ``ekd cache``'s (try-out 77, F6)."""
    from ekd.config import load_config, split_config_and_overrides
    from ekd.log_level import apply_log_level
    from ekd.teacher.cache.importer import import_cache
    from ekd.teacher.cache.logprob_rows import Columns

    if not args.overrides or not args.import_config or not args.import_out:
        raise EkdError(
            "usage: ekd cache import SRC [MORE.yaml ...] [key=value ...] --config CONFIG --out DIR"
        )
    src, *rest = args.overrides
    if Path(src).suffix.lower() in (".yaml", ".yml"):  # try-out 79, F7: said as the next argument's bad YAML
        raise EkdError(
            f"ekd cache import: SRC, the first argument, is {src}, a YAML file; give the Parquet or JSONL file of "
            "teacher logprobs first, then more YAML files and key=value overrides"
        )
    paths, overrides = split_config_and_overrides(args.import_config, rest)
    cfg = load_config(paths, [*overrides, f"teacher.cache_dir={args.import_out}"])
    apply_log_level(cfg.log.level)
    columns = Columns(
        args.text_column or (cfg.data.messages_field if cfg.data.format == "chat" else cfg.data.text_field),
        args.tokens_column,
        args.ids_column,
        args.logprobs_column,
    )
    with writing(args.import_out):
        directory, written = import_cache(cfg, src, columns, overwrite=args.overwrite)
    from ekd.teacher.cache.reader import CacheReader

    info = CacheReader(directory).info()
    done = (
        f"imported {src} into {directory}" if written else f"{directory} held this import of {src}, complete"
    )
    print(
        f"{done}: {counted(info['samples'], 'block', fmt=',')}, "
        f"{counted(info['positions'], 'position', fmt=',')}, "
        f"{info['bytes_per_position']:.2f} B/position"
    )
    return 0


def run_cache_command(args) -> int:
    """Entry point of ``ekd cache`` (``args``: config, overrides, overwrite)."""
    if args.config == "import":
        return run_import(args)

    if args.config in INSPECT:
        if len(args.overrides) != 1:
            raise EkdError(f"usage: ekd cache {args.config} DIR (one cache directory)")
        if not args.overrides[0].strip():  # Path('') reads as '.' (try-out 79, F6)
            raise EkdError(
                f"ekd cache {args.config}: the directory given is empty (an unset shell variable?)"
            )
        directory = Path(args.overrides[0])
        refuse_a_file(directory, option="")  # named as typed, not as teacher.cache_dir (try-out 49)
        refuse_missing_cache(directory)  # before torch is imported (the reader's)
        from ekd.teacher.cache.reader import CacheReader

        reader = CacheReader(directory)
        if args.config == "info":
            print(format_info(reader.info()))
            if problems := reader.size_problems():  # the figures above come from the manifest
                print(
                    f"ekd: warning: {reader.directory}: {'; '.join(problems)}: "
                    f"{rebuild_advice(reader.signature, shards=True)} "
                    "(`ekd cache verify` checks every record)",
                    file=sys.stderr,
                )
        else:
            result = reader.verify()
            print(
                f"ok: {reader.directory}: {counted(result['shards'], 'shard')}, "
                f"{counted(result['samples'], 'sample', fmt=',')} "
                "verified (sha256 + CRC-32 per record)"
            )
        return 0

    from ekd.config import load_config, split_config_and_overrides
    from ekd.log_level import apply_log_level
    from ekd.nearest import did_you_mean
    from ekd.teacher.cache.build import run_build, summary
    from ekd.train.same_settings import refuse_with_peers

    subcommands = ("import", *INSPECT)
    try:
        if not Path(args.config).exists() and (hint := did_you_mean(args.config, subcommands)):
            raise EkdError(
                f"'{args.config}' is neither a config file nor an `ekd cache` subcommand "
                f"({', '.join(subcommands)}){hint}"
            )
        paths, overrides = split_config_and_overrides(args.config, args.overrides)
        cfg = load_config(paths, overrides)
    except (
        EkdError
    ) as e:  # under torchrun the other ranks end with it, not wait for this one (try-out 151, F2)
        refuse_with_peers(e)
        raise
    apply_log_level(cfg.log.level)
    with writing(cfg.teacher.cache_dir or "."):  # a full or read-only disk: one line naming the directory
        result = run_build(cfg, overwrite=args.overwrite)
    if result.rank == 0:
        print(format_summary(summary(result)))
    return 0


__all__ = ["add_import_arguments", "format_info", "format_summary", "run_cache_command", "run_import"]
