"""Every rank of a ``torchrun`` job runs the same settings, or the job stops at its start.

Each rank builds its config from its own command line and files. A job whose nodes were launched with
different lines, or read different copies of a YAML file, trained in silence with rank 0's settings recorded
and each rank's applied — a learning rate or method on one rank only, a micro-batch that changes the global
batch — or hung until the 4-hour host wait when the ranks' step counts differed (try-out 80, F1/F2).
:func:`check_same_settings` gathers every rank's :func:`rank_settings` (JSON over the host group: no pickle)
when the job starts and refuses any difference in one line naming the keys, before anything is read or written.

Local paths are not compared (nodes may mount the same files at different paths, and every path is resolved on
its own node); a hub id, a preset or a keyword in a path key is.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist

from ekd.errors import ConfigError

LOCAL_PATH = "<a local path>"  # what a rank's local path is compared as
SHOWN_KEYS = 4  # differing keys named in the line (then "and N more")


def rank_settings(cfg: Any, **flags: object) -> dict[str, Any]:
    """``cfg`` as flat keys (``train.lr``: value) with its local paths masked (:data:`LOCAL_PATH`), and the
    command's ``flags`` (``--resume``, ``--overwrite``) as ``flag.<name>``: what every rank must agree on."""
    from ekd.config import flat_config
    from ekd.config.paths import DIRECTORIES, SPECS

    out = {}
    for key, value in flat_config(cfg.to_dict()).items():
        if key in DIRECTORIES or key in SPECS:
            value = _masked(value)
        out[key] = value
    out.update({f"flag.{name}": value for name, value in flags.items()})
    return json.loads(json.dumps(out, default=str))  # JSON values, as every rank reads them back


def _masked(value: Any) -> Any:
    """A path key's value with each local path (absolute, as the config resolves it) replaced by :data:`LOCAL_PATH`."""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, str) and value.removeprefix("hf:").startswith("/"):
        return LOCAL_PATH
    return value


def check_same_settings(rank: int, world_size: int, settings: dict[str, Any], group: Any = None) -> None:
    """Refuse a job whose ranks were given different :func:`rank_settings`: every rank gathers every rank's
    (two ``all_gather`` on ``group``: the lengths, then the padded JSON bytes) and raises the same line.

    Raises:
        ConfigError: the keys that differ from rank 0's, each with rank 0's value and the first other rank's.
    """
    if world_size <= 1:
        return
    blob = json.dumps(settings, sort_keys=True).encode()
    length = torch.tensor([len(blob)], dtype=torch.long)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length, group=group)
    width = max(int(n) for n in lengths)
    mine = torch.zeros(width, dtype=torch.uint8)
    mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    gathered = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine, group=group)
    everyone = [json.loads(bytes(t[: int(n)].tolist())) for t, n in zip(gathered, lengths)]
    differing = _differences(everyone)
    if differing:
        named = [
            f"{key} (rank 0: {first}, rank {r}: {other})" for key, first, r, other in differing[:SHOWN_KEYS]
        ]
        more = f" and {len(differing) - SHOWN_KEYS} more" if len(differing) > SHOWN_KEYS else ""
        raise ConfigError(
            f"torchrun: the ranks of this job were given different settings: {', '.join(named)}{more}; every rank "
            "must run the same command line with the same config files (local paths aside)",
            keys=tuple(key for key, *_ in differing if not key.startswith("flag.")),
        )


def _differences(everyone: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    """(key, rank 0's value, the first rank that differs, its value) for every key where a rank differs from rank 0,
    in sorted key order; a key a rank lacks reads as ``(unset)``."""
    first = everyone[0]
    out = []
    for key in sorted(set().union(*everyone)):
        for r, settings in enumerate(everyone[1:], start=1):
            if settings.get(key, "(unset)") != first.get(key, "(unset)"):
                out.append((key, _shown(first.get(key, "(unset)")), r, _shown(settings.get(key, "(unset)"))))
                break
    return out


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


__all__ = ["check_same_settings", "rank_settings"]
