"""Hub ids on a machine without network: one line in seconds, not minutes of retries.

``huggingface_hub`` retries every request that cannot reach the endpoint (five times, backing off to 8 s,
for each file a loader asks for), so a mistyped local path or a hub id on an offline machine used to take
minutes before its error. ekd probes the endpoint once per process (a TCP connect, 3 s) before the first
hub load:

- a local path, reachable (through the configured proxy, if any), or the libraries' own offline mode set
  (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1`` for datasets): loaders run as usual;
- unreachable and the files in the local cache (``HF_HOME``): ``local_files_only=True`` and the hub's offline
  mode for the rest of the process, so no later request (an optional file a loader probes) retries either;
- an empty spec, a path (``./x``, ``/x``, ``~/x``) that does not exist, or a name that is no valid hub id
  (``org/na me``, ``a/b/c``): one error line saying so, no probe;
- unreachable and not cached: one error line naming the spec and the fixes.

Loads a library makes on its own (lm-eval's task datasets, see ``ekd.eval.tasks``) get the same probe through
:func:`offline_unless_reachable`: unreachable, the process goes offline before the load, so a cached dataset
loads at once and a missing one fails at once, in one line, instead of after minutes of retries.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import proxy_bypass_environment

from ekd.config.paths import absolute, read_as
from ekd.errors import ConfigError, EkdError, ModelError
from ekd.log_level import EVERY_RANK

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _env_on(*names: str) -> bool:
    return any(os.environ.get(n, "").strip().lower() in {"1", "true", "yes", "on"} for n in names)


def hub_offline() -> bool:
    """Whether the hub's offline mode is on in this process (``HF_HUB_OFFLINE``: the user's, or ekd's own once a
    model was read from the cache)."""
    return _env_on("HF_HUB_OFFLINE")


def is_local(spec: str) -> bool:
    """Whether ``spec`` names an existing path (the loaders read it from disk; anything else is a hub id)."""
    return bool(spec.strip()) and Path(spec).expanduser().exists()  # Path("") is the current directory


@functools.cache
def endpoint_unreachable() -> str:
    """Why the hub endpoint cannot be reached ("" when it can). With a proxy configured, the proxy is what
    must answer (a stale ``HTTPS_PROXY`` is as offline as no network). Cached per process."""
    from huggingface_hub import constants

    proxy = next((os.environ[v] for v in _PROXY_VARS if os.environ.get(v)), "")
    if proxy and proxy_bypass_environment(urlparse(constants.ENDPOINT).hostname or ""):
        proxy = ""  # NO_PROXY names the hub: the libraries go to it directly (try-out 154, N9)
    url = urlparse(proxy if "://" in proxy else f"http://{proxy}" if proxy else constants.ENDPOINT)
    default_port = 443 if url.scheme == "https" else 1080 if url.scheme.startswith("socks") else 80
    host, port = url.hostname or "huggingface.co", url.port or default_port
    try:
        connection = socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S)
    except OSError as e:
        what = f"the proxy {host}:{port}" if proxy else host
        return f"{what} cannot be reached: {e.strerror or type(e).__name__}"
    with connection:
        # an http:// proxy is asked to pass a request; of a TLS (https://) or SOCKS one, its port answering is known
        if proxy and url.scheme == "http":
            return _proxy_refusal(
                connection, f"{host}:{port}", urlparse(constants.ENDPOINT), _proxy_auth(url)
            )
    return ""


def _proxy_auth(url) -> str:
    """The ``Proxy-Authorization`` header line for a proxy URL with credentials (``http://user:pass@host:port``),
    as the libraries send it (review 156, R6: an authenticating proxy answered 407 and counted as no network); ""
    without credentials."""
    if url.username is None:
        return ""
    import base64
    from urllib.parse import unquote

    pair = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
    return f"Proxy-Authorization: Basic {base64.b64encode(pair).decode()}\r\n"


def _proxy_refusal(connection: socket.socket, proxy: str, endpoint, auth: str = "") -> str:
    """Why the HTTP proxy on ``connection`` does not pass requests to the hub ``endpoint`` ("" when it does): asked
    as a client asks it — ``CONNECT host:443`` for an https endpoint, a ``HEAD`` of the endpoint's URL for an http
    one — and read within the probe's time. A proxy that is up but refuses the hub (403, 407) or never answers was
    counted as network: a cached model then failed with a bare "403 Forbidden", or waited minutes (try-out 152,
    F3)."""
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if endpoint.scheme == "https":
        request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n"
    else:
        url = f"{endpoint.scheme}://{host}:{port}/"
        request = f"HEAD {url} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Connection: close\r\n\r\n"
    try:
        connection.settimeout(PROBE_TIMEOUT_S)
        connection.sendall(request.encode())
        status = connection.recv(256).split(b"\r\n", 1)[0].decode("latin-1").strip()
    except TimeoutError:
        return f"the proxy {proxy} does not answer (nothing within {PROBE_TIMEOUT_S:g} s)"
    except OSError as e:
        return f"the proxy {proxy} does not answer ({e.strerror or type(e).__name__})"
    parts = status.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return f"the proxy {proxy} does not answer as an HTTP proxy ({status[:60] or 'nothing'})"
    code = int(parts[1])
    if code in (403, 407) or code >= 500 or (endpoint.scheme == "https" and code != 200):
        return f"the proxy {proxy} does not pass requests to {host} ({status.split(' ', 1)[1]})"
    return ""


def _refuse_missing_path(spec: str, key: str, error: type[EkdError]) -> None:
    """One line for a spec that is neither an existing path nor a well-formed hub id (no probe, no retries)."""
    if not spec.strip():
        raise error(f"{key} is empty; pass a directory, a hub id (org/name) or preset:<name>")
    if spec.startswith((".", "/", "~")):
        raise error(
            f"{key}: {spec} does not exist{read_as(spec)}; "
            f"{_demo_writes(spec) or 'pass an existing directory or a hub id (org/name)'}"
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    # try-out 51, F6: the other refusals offered it
    if key == "model.tokenizer" and spec.startswith("preset:"):
        raise error(
            f"{key}: '{spec}' is a model preset, not a tokenizer; a preset model reads the run's tokenizer: name "
            "teacher, student, train_bpe, a directory holding tokenizer files or a hub id"
        )
    try:
        validate_repo_id(spec)
    except HFValidationError:
        raise error(
            f"{key}: '{spec}' is not an existing path{read_as(spec)} and not a valid hub id (org/name: letters, "
            f"digits, '-', '_', '.'); {_demo_writes(spec) or 'check the spelling'}"
        ) from None


DEMO_MODELS = ("teacher", "student-init")
"""What ``ekd demo`` writes into its ``--out`` (default ``runs/demo``), which the shipped configs/demo.yaml and
configs/cache-demo.yaml name."""


def _demo_writes(spec: str) -> str:
    """``"ekd demo writes it: run ..."`` for a missing ``<...>/demo/teacher`` or ``.../student-init``,
    the demo's models the shipped configs name (try-out 138, F9: told to check the spelling); else ""."""
    path = Path(spec)
    if path.name in DEMO_MODELS and path.parent.name == "demo":
        return "`ekd demo` writes it: run `ekd demo` first (or name your own models)"
    return ""


def check_model_spec(spec: str, key: str, revision: str = "", weights: bool = True) -> None:
    """Fail fast, before data is read, on a model that cannot load: a missing path (or, with ``weights``, a
    local directory without weights), a malformed hub id, a hub id that is neither reachable nor cached, or an
    unknown ``preset:<name>`` (with a "did you mean").

    Raises:
        ModelError: one line naming ``key`` and the fix.
    """
    if not spec.startswith("preset:"):
        from ekd.models.load import check_model_dir

        # a local directory: its files, before any tokenizer check
        check_model_dir(spec, key, weights=weights)
        hub_kwargs(spec, key, revision=revision)
        if weights and not is_local(spec) and hub_offline():
            _check_cached_weights(spec, key, revision)
        return
    from ekd.models.presets import require_preset

    require_preset(spec.removeprefix("preset:"), key)


def _check_cached_weights(spec: str, key: str, revision: str) -> None:
    """Offline, a hub id's cached snapshot holds the weights it names: a weights file, and every shard a sharded
    index lists (try-out 152, F11: a download cut short — config.json cached, the weights still ``.incomplete`` —
    was found only when the model loaded, after the data, and said as a file the repository has not got).

    Raises:
        ModelError: one line naming the file missing and the download to finish.
    """
    import json

    from ekd.models.load import WEIGHT_FILES

    snapshot = model_directory(spec, revision)
    if snapshot is None:
        return  # not cached: hub_kwargs said so, or the libraries will
    at = f" --revision {revision}" if revision else ""
    finish = f"finish its download where the hub is reachable (`hf download {spec}{at}`)"
    if not any(next(snapshot.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ModelError(f"{key}: '{spec}' in the hub cache has a config.json but no weights (a download not "
                         f"finished?); {finish}")  # fmt: skip
    # the index transformers loads: the safetensors one where there is one (a .bin index beside it is not read)
    indexes = sorted(snapshot.glob("*.safetensors.index.json")) or sorted(snapshot.glob("*.index.json"))
    if any(snapshot.glob("*.safetensors")) and not any(snapshot.glob("*.safetensors.index.json")):
        indexes = []  # a single safetensors file: no shards
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            continue  # the loader says what is wrong with it
        if missing := sorted(name for name in shards if not (snapshot / name).is_file()):
            raise ModelError(
                f"{key}: '{spec}' in the hub cache lacks {missing[0]}"
                f"{f' and {len(missing) - 1} more shards' if len(missing) > 1 else ''} of {index.name} (a download "
                f"not finished?); {finish}"
            )


_WENT_OFFLINE = False
"""Whether ekd switched the hub's offline mode on in this process (the hub unreachable), not the user."""


def _go_offline() -> None:
    """The hub's own offline mode for this process. transformers and huggingface_hub read it per request;
    ``datasets`` copies it when imported, so one already imported is switched too (else its loads would
    still go to the network and retry)."""
    from huggingface_hub import constants

    global _WENT_OFFLINE
    _WENT_OFFLINE = _WENT_OFFLINE or not _env_on("HF_HUB_OFFLINE")  # ekd's own switch, not the user's
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True


def offline_unless_reachable(key: str) -> str:
    """Before loads a library makes on its own (lm-eval's task datasets): probe the hub once and, when it
    cannot be reached, switch this process to the hub's offline mode, so a cached dataset loads at once and
    a missing one fails at once (the caller turns that failure into one line).

    Args:
        key: the config key or command the loads are for, for the log line (``eval.tasks``).

    Returns:
        Why the hub is not used: the probe's reason, the offline mode the user set, or "" (reachable).
    """
    if _env_on("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        _go_offline()  # the user's setting, also for a ``datasets`` imported before it was set
        return "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    why = endpoint_unreachable()
    if why:
        log.info(  # this node's fact: every rank that finds it says it
            "%s: %s; datasets come from the local cache only (offline from here on)",
            key,
            why,
            extra=EVERY_RANK,
        )
        _go_offline()
    return why


def model_directory(spec: str, revision: str = "", filename: str = "config.json") -> Path | None:
    """The directory a model's files are read from: ``spec`` itself where it is a local directory, else — a hub id
    — the hub cache's snapshot of ``revision`` (``main`` when empty) where its ``filename`` is cached, read without
    the network; None for a preset, a hub id not cached here, or nothing. What identifies a hub model by its
    weights (:func:`ekd.models.identity.weight_files`; try-out 152, F1: a hub teacher was recorded by its name and
    an empty revision, so new weights under ``main`` were the same teacher)."""
    if spec.startswith("preset:") or not spec.strip():
        return None
    local = Path(spec).expanduser()
    if local.exists():
        return local if local.is_dir() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(spec, filename, revision=revision or None)
    except Exception:  # an id the hub would refuse (bad characters): nothing cached
        return None
    return Path(found).parent if isinstance(found, str) else None


def _cached(spec: str, filename: str, revision: str) -> bool:
    """Whether the hub id ``spec`` has ``filename`` in the hub cache at ``revision`` (no network)."""
    return model_directory(spec, revision, filename) is not None


def hub_kwargs(
    spec: str,
    key: str,
    filename: str = "config.json",
    revision: str = "",
    error: type[EkdError] = ModelError,
) -> dict:
    """Extra ``from_pretrained`` keywords for ``spec`` when it is a hub id ({} for a local path).

    Args:
        spec: a hub id (``org/name``) or a local path.
        key: the config key or command that named it, for the error line (``model.teacher``).
        filename: a file every such repository has, to test the cache (``config.json``,
            ``tokenizer_config.json``).
        revision: the revision asked for ("" = main).
        error: the error type to raise.

    Returns:
        ``{}`` or ``{"local_files_only": True}``.

    Raises:
        error: the endpoint is unreachable and ``spec`` is not in the local cache.
    """
    if is_local(spec):
        return {}
    _refuse_missing_path(spec, key, error)  # offline too: a missing path is named, not read as a hub id
    if hub_offline():
        # the hub's offline mode (the user's, or ekd's own once a model was read from the cache): the cache
        # decides — a model not in it was said only when loaded, after the data or the whole training (try-out
        # 152, F12: a cache run's hub teacher, loaded to evaluate it at the end)
        why = (
            "the hub is offline (HF_HUB_OFFLINE=1)"
            if not _WENT_OFFLINE
            else "the hub cannot be reached (found earlier in this command)"
        )
        if _cached(spec, filename, revision):
            return {}
    else:
        why = endpoint_unreachable()
        if not why:
            return {}
        if _cached(spec, filename, revision):
            log.info(  # this node's fact: every rank that finds it says it
                "%s: %s; using the cached files of '%s' (offline from here on)",
                key,
                why,
                spec,
                extra=EVERY_RANK,
            )
            _go_offline()
            return {"local_files_only": True}
    local = (
        "a directory holding tokenizer files, or teacher, student or train_bpe"
        if key == "model.tokenizer"  # a preset is no tokenizer (try-out 51, F6)
        else "a saved model directory"
        if key.startswith("student init")  # it refuses presets (try-out 86, F2)
        else "a saved model directory or preset:<name>"
    )
    raise error(
        f"{key}: '{spec}' is not a local directory (no {absolute(spec)}), and as a hub id "
        f"{_not_cached(spec, filename, revision, key)} while {why}; pass {local}, or run where the hub is reachable"
    )


def cached_repo(repo_id: str) -> Path:
    """The hub cache's folder of the model ``repo_id`` (``HF_HUB_CACHE/models--org--name``; it may not exist)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


_REVISION_KEYS = {
    "model.teacher": (
        "model.teacher_revision, else model.revision: a teacher and a student pinned apart take "
        "model.teacher_revision",
        "neither model.teacher_revision nor model.revision set",
    ),
    "model.student": (
        "model.revision; the teacher's own commit goes in model.teacher_revision",
        "model.revision not set",
    ),
    "model.tokenizer": ("model.revision", "model.revision not set"),
    "student init": ("--revision", "--revision not set"),
}
"""Config key (or command) → what set a model's revision, and what would pin one read at its default branch: said
where the revision is not in the hub cache."""


def _not_cached(spec: str, filename: str, revision: str, key: str = "") -> str:
    """What of a hub id the local cache lacks, as words: the id ('it is not in the local cache'), its revision
    beside those cached and the keys that set it (try-out 152, F4: a revision missing from a cached repository was
    said as the whole id missing; try-out 160, F10: a student's commit given as model.revision was looked up in the
    teacher's repository, the key not named), or the file a cached snapshot has not got."""
    repo = cached_repo(spec)
    refs = (
        sorted(p.name for p in (repo / "refs").glob("*") if p.is_file()) if (repo / "refs").is_dir() else []
    )
    snapshots = (
        sorted(p.name for p in (repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    )
    if not snapshots:
        return "it is not in the local cache"
    # no revision: the default branch (try-out 162, F3: it was said as a download cut short)
    asked = revision or "main"
    if asked not in refs and asked not in snapshots:
        cached = ", ".join(refs + snapshots[:4]) + (
            f" and {len(snapshots) - 4} more" if len(snapshots) > 4 else ""
        )
        keys = _REVISION_KEYS.get("student init" if key.startswith("student init") else key)
        said = f" ({keys[0] if revision else keys[1]})" if keys else ""
        what = f"its revision '{revision}'" if revision else "its default branch 'main'"
        return f"{what}{said} is not in the local cache (cached: {cached})"
    return f"its {filename} is not in the local cache (a download not finished?)"


def check_dataset_reachable(name: str, key: str) -> str:
    """Before ``datasets.load_dataset(name)``: "" when it may go to the hub, else why it must not.

    A local path passes at once. A hub id under the user's ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` is read
    from the cache (that is the reason returned); otherwise the hub is probed once
    (:func:`offline_unless_reachable`): unreachable, the process goes offline, so a cached dataset loads and a
    missing one fails at once — the caller names the returned reason in its one-line error. A path that does
    not exist is refused here (ConfigError).
    """
    if is_local(name):
        return ""
    check_dataset_path(name, key)
    return offline_unless_reachable(key)  # the user's offline mode counts as a reason too


def check_dataset_path(name: str, key: str) -> None:
    """Refuse an ``hf:`` dataset name that is neither an existing path nor a well-formed hub id, in one line, with no
    probe of the hub (a path spelled as one — ``.``, ``/``, ``~`` — that does not exist).

    Raises:
        ConfigError: naming the key and the path.
    """
    if not is_local(name):
        _refuse_missing_path(name, key, ConfigError)


__all__ = [
    "check_dataset_path",
    "check_dataset_reachable",
    "check_model_spec",
    "endpoint_unreachable",
    "hub_kwargs",
    "offline_unless_reachable",
]


def strict_field_error() -> type[Exception] | tuple[()]:
    """huggingface_hub's ``StrictDataclassError`` — what transformers ≥ 5 raises for a config field of another type —,
    or ``()`` (an ``except`` clause that catches nothing) with a huggingface_hub that predates strict dataclasses."""
    import huggingface_hub.errors

    return getattr(huggingface_hub.errors, "StrictDataclassError", ())
