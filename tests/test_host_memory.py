"""ekd.host_memory: glibc keeps freed large blocks after ``retain_freed_memory``, unless the user chose otherwise.

The allocator setting is process-global, so its effect is checked in fresh interpreters: a 128 MiB tensor (a
(1,024, 32,768) fp32 logits chunk) must come from the heap (glibc's ``mallinfo2``: no mmapped bytes) and be
served again from it, where the default allocator mmaps it.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys

import pytest

from ekd import host_memory

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or platform.libc_ver()[0] != "glibc"
    or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="needs glibc ≥ 2.33 (mallinfo2)",
)

PROBE = r"""
import ctypes, json, torch
from ekd.host_memory import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = retain_freed_memory()
before = libc.mallinfo2().hblkhd  # what was mmapped already (interpreter, torch)
mapped = []
for _ in range(2):  # the second allocation reuses the first one's freed block when it is kept
    x = torch.empty(1024, 32768)  # 128 MiB
    x.fill_(1.0)
    mapped.append(libc.mallinfo2().hblkhd - before)
    del x
print(json.dumps({"applied": applied, "mmapped_mib": [m >> 20 for m in mapped],
                  "heap_mib": libc.mallinfo2().arena >> 20}))
"""


def _probe(**env: str) -> dict:
    clean = {
        k: v for k, v in os.environ.items() if k not in (*host_memory.USER_SETTINGS, host_memory.OPT_OUT)
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_chunk_buffers_stay_in_the_heap():
    res = _probe()
    assert res["applied"] is True
    assert res["mmapped_mib"] == [0, 0]  # no new mmapped block: served from the heap
    assert res["heap_mib"] >= 128  # and still there after it was freed


@glibc
@pytest.mark.parametrize(
    "env",
    [
        {host_memory.OPT_OUT: "0"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},  # the benchmarks' memory processes set this
    ],
)
def test_the_users_choice_leaves_glibc_as_it_is(env):
    res = _probe(**env)
    assert res["applied"] is False
    assert min(res["mmapped_mib"]) >= 128  # glibc's own rule: a 128 MiB block is mmapped


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({}, None),
        ({"EKD_RETAIN_HOST_MEMORY": "off"}, "EKD_RETAIN_HOST_MEMORY=off"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
    ],
)
def test_skip_reason(env, reason, monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    got = host_memory.skip_reason(env)
    assert got is None if reason is None else reason in got


@pytest.mark.parametrize("value", ["disable", "n", "2"])
def test_an_unknown_switch_value_is_one_config_error(value):
    """EKD_RETAIN_HOST_MEMORY=disable left the feature on without a word (try-out 6)."""
    from ekd.errors import ConfigError

    with pytest.raises(ConfigError, match=f"EKD_RETAIN_HOST_MEMORY='{value}' is not understood; use 0"):
        host_memory.skip_reason({host_memory.OPT_OUT: value})
    assert host_memory.skip_reason({host_memory.OPT_OUT: "On"}) in (None, "the C library is not glibc")


def test_not_glibc_is_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    assert "not glibc" in host_memory.skip_reason({})


def test_a_capped_threshold_falls_back_to_no_mmap(monkeypatch):
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return param != host_memory.M_MMAP_THRESHOLD  # a glibc capping the threshold at 32 MiB refuses

    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setattr(host_memory, "skip_reason", lambda: None)
    monkeypatch.setattr(host_memory, "_mallopt", mallopt)
    assert host_memory.retain_freed_memory() is True
    assert calls == [
        (host_memory.M_MMAP_THRESHOLD, host_memory.MMAP_THRESHOLD),
        (host_memory.M_MMAP_MAX, 0),
        (host_memory.M_TRIM_THRESHOLD, host_memory.TRIM_THRESHOLD),
    ]


def test_a_cpu_run_keeps_freed_blocks_where_it_resolves_its_device(monkeypatch):
    import ekd.train.prepare as prepare

    calls = []
    monkeypatch.setattr(prepare, "retain_freed_memory", lambda: calls.append(True))
    assert prepare.resolve_device("cpu").type == "cpu"
    assert calls == [True]
    if not prepare.torch.cuda.is_available():
        assert prepare.resolve_device("auto").type == "cpu"
        assert calls == [True, True]
