"""Every rank of a ``torchrun`` job runs the same settings, or the job stops at its start.

Each rank builds its config from its own command line and files. A job whose nodes were launched with
different lines, or read different copies of a YAML file, trained in silence with rank 0's settings recorded
and each rank's applied — a learning rate or method on one rank only, a micro-batch that changes the global
batch — or hung until the 4-hour host wait when the ranks' step counts differed (try-out 80, F1/F2).
:func:`check_same_settings` gathers every rank's :func:`rank_settings` (JSON over the host group: no pickle)
when the job starts and refuses any difference in one line naming the keys, before anything is read or written.

Local paths are compared among the ranks of one machine (its hostname) only — nodes may mount the same files at
different paths, and every path is resolved on its own node; across machines a local path is compared as
:data:`LOCAL_PATH` (a hub id, a preset or a keyword in a path key still is). The reporting keys (``log.*``) are
not compared: rank 0 reports, and a debug log or progress bars on one node change no training.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import torch
import torch.distributed as dist

from ekd.errors import ConfigError

LOCAL_PATH = "<a local path>"  # what a local path is compared as between machines
UNSET = "(unset)"  # a key a rank's settings lack
SHOWN_KEYS = 4  # differing keys named in the line (then "and N more")


def rank_settings(cfg: Any, **flags: object) -> dict[str, Any]:
    """``cfg`` as flat keys (``train.lr``: value) without the reporting keys (``log.*``), and the command's
    ``flags`` (``--resume``, ``--overwrite``) as ``flag.<name>``: what every rank must agree on."""
    from ekd.config import REPORTING_KEYS, flat_config

    out = {k: v for k, v in flat_config(cfg.to_dict()).items() if not k.startswith(REPORTING_KEYS)}
    out.update({f"flag.{name}": value for name, value in flags.items()})
    return json.loads(json.dumps(out, default=str))  # JSON values, as every rank reads them back


CONFIG_ERROR = "config_error"
"""The settings a rank whose config could not be read joins the job with (:func:`refuse_with_peers`)."""


def refuse_with_peers(error: BaseException) -> None:
    """Under ``torchrun``, a rank whose command line or config files could not be read joins the job's process
    group anyway, with :data:`CONFIG_ERROR` for settings, so that the other ranks end with its line at the start
    (:func:`check_same_settings`) instead of waiting in the rendezvous for a rank that left: a typo or a YAML
    missing on one node held the other node silently for the rendezvous' whole timeout (try-out 151, F2). The
    device is the default run's (``run.device=auto``: the backend every rank of such a job picks). In one process:
    nothing. Returns on this rank; the caller raises ``error``."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    from ekd.train.distributed import distributed
    from ekd.train.prepare import resolve_device

    try:
        with distributed(resolve_device("auto"), {CONFIG_ERROR: str(error)}):
            pass
    except ConfigError:  # its own line, relayed to the others: this rank says its own
        return


def masked(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with each local path of a path key (absolute, as the config resolves it) as :data:`LOCAL_PATH`:
    what ranks on different machines compare."""
    from ekd.config.paths import DIRECTORIES, SPECS

    return {k: _masked(v) if k in DIRECTORIES or k in SPECS else v for k, v in settings.items()}


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, str) and value.removeprefix("hf:").startswith("/"):
        return LOCAL_PATH
    return value


def check_same_settings(world_size: int, settings: dict[str, Any], group: Any = None) -> None:
    """Refuse a job whose ranks were given different :func:`rank_settings`: every rank gathers every rank's, with
    its hostname (two ``all_gather`` on ``group``: the lengths, then the padded JSON bytes), and raises the same
    line. Each rank is compared with rank 0, local paths masked (:func:`masked`), and with the first rank of its
    own machine as given.

    Raises:
        ConfigError: the keys that differ, each with the two ranks and their values.
    """
    if world_size <= 1:
        return
    blob = json.dumps({"host": socket.gethostname(), "settings": settings}, sort_keys=True).encode()
    length = torch.tensor([len(blob)], dtype=torch.long)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length, group=group)
    width = max(int(n) for n in lengths)
    mine = torch.zeros(width, dtype=torch.uint8)
    mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    gathered = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine, group=group)
    everyone = [json.loads(bytes(t[: int(n)].tolist())) for t, n in zip(gathered, lengths)]
    failed = [
        (r, e["host"], e["settings"][CONFIG_ERROR])
        for r, e in enumerate(everyone)
        if CONFIG_ERROR in e["settings"]
    ]
    if failed:
        rank, host, message = failed[0]
        raise ConfigError(
            f"torchrun: rank {rank} (host {host}) could not read its command line or config files: {message}"
        )
    hosts, settings = [e["host"] for e in everyone], [e["settings"] for e in everyone]
    differing = _differences(hosts, settings)
    if missing := _missing_paths(differing, settings):
        key, rank, written, other = missing[0]
        raise ConfigError(
            f"torchrun: {key}={written} names nothing on rank {rank} (host {hosts[rank]}), while rank {other} reads "
            f"the local path it names there: every node needs the files its config names (copy them to rank "
            f"{rank}'s node, or name a path that exists there)",
            keys=(key,),
        )
    if differing:
        named = [f"{key} (rank {a}: {va}, rank {b}: {vb})" for key, a, va, b, vb in differing[:SHOWN_KEYS]]
        more = f" and {len(differing) - SHOWN_KEYS} more" if len(differing) > SHOWN_KEYS else ""
        raise ConfigError(
            f"torchrun: the ranks of this job were given different settings: {', '.join(named)}{more}; every rank "
            "must run the same command line with the same config files (local paths may differ between machines)",
            keys=tuple(key for key, *_ in differing if not key.startswith("flag.")),
        )


def _differences(hosts: list[str], everyone: list[dict[str, Any]]) -> list[tuple[str, int, str, int, str]]:
    """(key, rank a, its value, rank b, its value) for every key where a rank b differs from rank a — rank 0 with
    local paths masked, else the first rank on b's machine as given — once per key, in sorted key order; a key a
    rank lacks reads as ``(unset)``."""
    views = [masked(s) for s in everyone]
    leader = {}  # host → its first rank
    for r, host in enumerate(hosts):
        leader.setdefault(host, r)
    out = []
    for key in sorted(set().union(*everyone)):
        for b in range(1, len(everyone)):
            a = leader[hosts[b]]
            if views[0].get(key, UNSET) != views[b].get(key, UNSET):  # across machines: paths masked
                side = everyone if hosts[b] == hosts[0] else views  # one machine: its paths shown as given
                out.append((key, 0, _shown(side[0].get(key, UNSET)), b, _shown(side[b].get(key, UNSET))))
                break
            if a != b and everyone[a].get(key, UNSET) != everyone[b].get(key, UNSET):  # one machine: as given
                out.append(
                    (key, a, _shown(everyone[a].get(key, UNSET)), b, _shown(everyone[b].get(key, UNSET)))
                )
                break
    return out


def _missing_paths(
    differing: list[tuple[str, int, str, int, str]], settings: list[dict[str, Any]]
) -> list[tuple[str, int, str, int]]:
    """(key, rank, its value, the other rank) for each of ``differing``'s path keys where one rank's value is a
    local path (resolved: absolute) and the other rank's, written the same way, is not — a path that exists on one
    node and not on the other (try-out 151, F7: a teacher directory missing on one node was said as "given
    different settings ... every rank must run the same command line", which both nodes did)."""
    from ekd.config.paths import DIRECTORIES, SPECS

    out = []
    for key, a, _, b, _ in differing:
        if key not in DIRECTORIES and key not in SPECS:
            continue
        va, vb = settings[a].get(key), settings[b].get(key)
        if not (isinstance(va, str) and isinstance(vb, str)):
            continue
        absolute = [v.removeprefix("hf:").startswith("/") for v in (va, vb)]
        if absolute == [True, False] and _names_the_end(va, vb):
            out.append((key, b, vb, a))
        elif absolute == [False, True] and _names_the_end(vb, va):
            out.append((key, a, va, b))
    return out


def _names_the_end(resolved: str, written: str) -> bool:
    """Whether the relative path ``written`` is the end of the absolute ``resolved``, whole components
    (``teacher`` of ``/n0/teacher``, not of ``/n0/my-teacher``; nothing for an empty value; review 156, R9)."""
    rel = written.removeprefix("./").rstrip("/")
    return bool(rel) and resolved.rstrip("/").endswith("/" + rel)


def _shown(value: Any) -> str:
    """A value as the line shows it: a string as is ('' as ``""``), anything else as JSON."""
    return value if isinstance(value, str) and value else json.dumps(value)


__all__ = ["check_same_settings", "masked", "rank_settings"]
