"""Test-suite settings: one intra-op thread. The tests run tiny tensors, where a second OpenMP thread only
adds synchronization (and on a loaded 2-core CI box makes small ops up to 100× slower). ekd's user cache
directory (the weight files' digests) is the session's own, not the user's. Shared fixtures:
``hub_unreachable`` (no network, by a closed local port).

Hypothesis profiles (``EKD_HYPOTHESIS_PROFILE``): ``ci``, the default, draws the same examples on every run
(``derandomize``, no example database), so ``make test`` passes or fails on the code alone, never on a new
random draw; ``explore`` (``make fuzz``: several rounds) draws new examples every run and keeps failing ones in
``.hypothesis/`` to replay them first. A case ``explore`` finds becomes an ``@example`` of its test."""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("EKD_HYPOTHESIS_PROFILE", "ci"))

# The modules that take longest on CI's 2 cores (each spawns 2-rank torchrun jobs or whole CLI runs; seconds
# summed over their tests, `pytest -n 3 --dist loadfile --durations=0` in a fresh clone, 2026-12-03 21:31, beside
# another job): collected first, so that with `--dist loadfile --no-loadscope-reorder` (Makefile) xdist hands them
# out before the many short modules and no worker is left running one long module alone at the end (longest-first
# scheduling).
LONGEST_FIRST = (
    "test_rank_errors.py",  # 157 s
    "test_cache_build.py",  # 119 s
    "test_tasks.py",  # 112 s
    "test_sharded_checkpoint.py",  # 103 s
    "test_demo.py",  # 101 s
    "test_run_lock.py",  # 83 s
    "test_fsdp.py",  # 68 s
    "test_distributed.py",  # 56 s
    "test_plan.py",  # 51 s
    "test_presets.py",  # 43 s
    "test_run_safety.py",  # 27 s
    "test_rank_work.py",  # 25 s
)


def pytest_collection_modifyitems(config, items):
    """The modules of LONGEST_FIRST first, in its order; the others after them in their collected order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # stable: a module's tests keep their order
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # subprocesses (the CLI, torchrun) inherit it
        mp.setenv("EKD_CACHE_HOME", str(tmp_path_factory.mktemp("ekd-cache-home")))
        yield


@pytest.fixture(autouse=True)
def _hub_online_as_started(monkeypatch):
    """Each test starts as a fresh process does: ekd has not switched the hub's offline mode on itself (its words
    for an id not cached name the user's HF_HUB_OFFLINE otherwise), and what ``main()`` sets in the environment
    under a WORLD_SIZE a test gives (``TORCH_CPP_LOG_LEVEL``) is undone after it (review 156, R16)."""
    import ekd.hub

    monkeypatch.setattr(ekd.hub, "_WENT_OFFLINE", False)
    if "TORCH_CPP_LOG_LEVEL" in os.environ:
        monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", os.environ["TORCH_CPP_LOG_LEVEL"])
    else:  # set then deleted: the undo of the set removes what a test's main() left
        monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "")
        monkeypatch.delenv("TORCH_CPP_LOG_LEVEL")


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The hub endpoint points at a closed local port: the real probe fails at once, as on a machine with no
    network (no mocking of the probe itself). The offline switches ekd may flip (environment, huggingface_hub,
    an imported ``datasets``) are restored after the test."""
    import datasets.config
    from huggingface_hub import constants

    from ekd.hub import endpoint_unreachable

    for var in (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",  # a CI's no_proxy=127.0.0.1 sends the probe past the proxy a test sets (review 156, R17)
        "no_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)  # restored after the test
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", datasets.config.HF_DATASETS_OFFLINE)
    endpoint_unreachable.cache_clear()
    yield
    endpoint_unreachable.cache_clear()
