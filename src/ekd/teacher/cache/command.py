"""``ekd cache``: build, inspect and verify an offline teacher cache.

    ekd cache CONFIG [key=value ...] [--overwrite]    build (or resume) the cache in teacher.cache_dir
    ekd cache info DIR                                 samples, positions, bytes/position and /token, signature
    ekd cache verify DIR                               every shard's sha256 and every record's CRC-32 and parse

Problems print one line ``ekd: error: ...`` (a ``CacheError``) and exit 2.
"""

from __future__ import annotations

from ekd.errors import EkdError
from ekd.io import writing

INSPECT = ("info", "verify")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_info(info: dict) -> str:
    """``CacheReader.info()`` as aligned ``key  value`` lines, layout and signature indented below."""
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k:<22} {_fmt(v)}" for k, v in value.items())
        else:
            lines.append(f"{key:<28} {_fmt(value)}")
    return "\n".join(lines)


def format_summary(s: dict) -> str:
    ratio = s["throughput_ratio"]
    build = s["build_samples_per_s"]
    throughput = (
        f"{build:,.1f} samples/s = {ratio:.2f}× the teacher's forward-only {s['forward_samples_per_s']:,.1f} samples/s"
        if ratio is not None
        else "n/a (nothing left to build)"
    )
    return "\n".join(
        [
            f"teacher cache written to {s['directory']} ({s['world_size']} process{'es' if s['world_size'] > 1 else ''})",
            f"  samples            {s['samples']:,} ({s['samples_built']:,} built now in {s['build_seconds']:.1f}s)",
            f"  positions          {s['positions']:,} ({s['entries_per_position']:.2f} entries/position)",
            f"  bytes/position     {s['bytes_per_position']:.2f}",
            f"  bytes/train token  {s['bytes_per_token']:.2f}",
            f"  on disk            {s['bytes_on_disk']:,} bytes",
            f"  build throughput   {throughput}",
        ]
    )


def run_cache_command(args) -> int:
    """Entry point of ``ekd cache`` (``args``: config, overrides, overwrite)."""
    from ekd.teacher.cache.reader import CacheReader

    if args.config in INSPECT:
        if len(args.overrides) != 1:
            raise EkdError(f"usage: ekd cache {args.config} DIR (one cache directory)")
        reader = CacheReader(args.overrides[0])
        if args.config == "info":
            print(format_info(reader.info()))
        else:
            result = reader.verify()
            print(
                f"ok: {reader.directory}: {result['shards']} shards, {result['samples']:,} samples verified (sha256 + CRC-32 per record)"
            )
        return 0

    from ekd.config import load_config, split_config_and_overrides
    from ekd.log_level import apply_log_level
    from ekd.teacher.cache.build import run_build, summary

    paths, overrides = split_config_and_overrides(args.config, args.overrides)
    cfg = load_config(paths, overrides)
    apply_log_level(cfg.log.level)
    with writing(cfg.teacher.cache_dir or "."):  # a full or read-only disk: one line naming the directory
        result = run_build(cfg, overwrite=args.overwrite)
    if result.rank == 0:
        print(format_summary(summary(result)))
    return 0


__all__ = ["format_info", "format_summary", "run_cache_command"]
