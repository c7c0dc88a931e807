"""User-facing errors: one clear line naming the problem and the fix. The CLI prints them without a
traceback (unless ``--debug``) and exits non-zero."""


def first_line(e: BaseException, last: bool = False) -> str:
    """The first (or last) non-empty line of an exception's message, or its type name: a library's error
    inside one of ours. A first line that ends in ':' announces its reason on the next line (transformers'
    "Class validation error for validator 'validate_architecture':"), which is kept with it."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if last:
        return lines[-1]
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


class EkdError(Exception):
    """Base class of every error caused by input (config, data, models, caches, checkpoints)."""


class ModelError(EkdError):
    """A model or tokenizer cannot be used as configured."""


class RunDirError(EkdError):
    """The run directory holds something we must not overwrite."""


class NonFiniteLossError(EkdError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class ConfigError(EkdError, ValueError):
    """A user mistake in a config file or override; the message names the key and the fix.

    ``keys``: the config keys (``section.name``) the message names, in its order, for a program that acts on
    them without reading the message (``ekd eval`` of a run saved under older rules: which keys to reset).
    Every error of building a config carries them (``ekd.config.load.build_config``: the field rules, the rules
    between fields, unknown keys); empty where the error names no key.
    """

    def __init__(self, *args: object, keys: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.keys = keys


def copy_of_rank0(e: BaseException) -> bool:
    """Whether ``e`` is another rank's copy of an error that global rank 0 raised and reports itself
    (:func:`ekd.train.rank_work.run_on_main`): the CLI prints it once, on rank 0."""
    return getattr(e, "copy_of_rank0", False)
