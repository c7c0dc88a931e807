"""Document boundaries: which token (if any) starts and which ends every packed document.

Model families differ: Llama-3 and Gemma tokenizers prepend a BOS, Qwen base models end documents with
``<|endoftext|>``, chat checkpoints with their turn-end token, GPT-2-style models use one token for both.
``data.separator`` picks the rule:

- ``auto``: the models' own convention. BOS is prepended when the tokenizer adds one by itself
  (``tokenizer("a")`` starts with ``bos_token_id``); the end-of-document id is the models' ``eos_token_id``
  (generation config first, then model config; a list picks the tokenizer's EOS if it is in the list, else its
  first entry; absent → the tokenizer's EOS). Teacher and student must agree, else one ConfigError line.
- ``eos``: the tokenizer's EOS after every document (no BOS).
- ``bos_eos``: the tokenizer's BOS before and EOS after every document.
- ``none``: nothing added; documents are concatenated (no end-of-document target).

The EOS is a target (ending is part of the document); the BOS never is (nothing in the document precedes it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ekd.errors import ConfigError, first_line
from ekd.hub import hub_kwargs
from ekd.models.text_config import text_config, token_ids_or_none

# annotations only: importing transformers costs seconds (`ekd config show` reads this package)
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SEPARATORS = ("auto", "eos", "bos_eos", "none")

EosValue = int | Sequence[int] | None


@dataclass(frozen=True)
class DocumentBoundary:
    """How a document is framed in the packed stream.

    Attributes:
        separator: ``data.separator`` as configured (auto, eos, bos_eos, none).
        bos_id: Token prepended to every document, or None.
        eos_id: Token appended to every document (a target), or None.
        pad_id: Filler of a lone partial block (never a target, never attended to by real tokens).
    """

    separator: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int

    def describe(self) -> str:
        """A stable one-line description, e.g. ``auto:bos=1,eos=2`` (recorded in the run and cache signature)."""
        bos = "-" if self.bos_id is None else str(self.bos_id)
        eos = "-" if self.eos_id is None else str(self.eos_id)
        return f"{self.separator}:bos={bos},eos={eos}"


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer prepends its BOS when asked for special tokens (Llama-3, Gemma: yes; Qwen: no)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(special) > len(plain) and special[0] == bos


def end_of_document_id(eos: EosValue, tokenizer_eos: int | None) -> int | None:
    """The one id that ends a document for a model whose ``eos_token_id`` is ``eos`` (an int, a list or None)."""
    ids = [int(eos)] if isinstance(eos, int) else [int(i) for i in (eos or [])]
    if not ids:
        return tokenizer_eos
    return tokenizer_eos if tokenizer_eos in ids else ids[0]


def read_model_eos(spec: str, revision: str = "", trust_remote_code: bool = False, *, key: str) -> EosValue:
    """``eos_token_id`` of a hub id or local model directory: generation config first, then model config.

    Reads the small JSON configs only (no weights). Raises ConfigError naming ``key`` (the config key that
    names the model, e.g. ``model.student``) when the model cannot be found or neither config can be read.
    """
    from ekd.hub import strict_field_error

    StrictDataclassError = strict_field_error()  # noqa: N806 (an exception class, or () before it existed)
    from transformers import AutoConfig, GenerationConfig

    from ekd.models.load import generation_config_problem

    kwargs: dict = {"revision": revision} if revision else {}
    kwargs.update(hub_kwargs(spec, key, revision=revision, error=ConfigError))
    if broken := generation_config_problem(spec):  # transformers says OSError, as for a missing file
        raise ConfigError(
            f"{key}: '{spec}': {broken}, which data.separator=auto reads for the end-of-document id; replace that "
            "file (save_pretrained writes it again), or delete it to use config.json's"
        )
    try:
        eos = GenerationConfig.from_pretrained(spec, **kwargs).eos_token_id
    except (OSError, ValueError):  # none there (a hub id's is read here too; a local one was checked above)
        eos = None
    except StrictDataclassError as e:  # a field of another type (transformers validates them)
        raise ConfigError(
            f"{key}: '{spec}': its generation_config.json does not load ({first_line(e)}), which "
            "data.separator=auto reads for the end-of-document id; fix that field, or delete the file to use "
            "config.json's"
        ) from None
    if eos is not None:
        return eos
    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, StrictDataclassError) as e:  # the last: a field of another type
        from ekd.models.load import loader_hint

        # a cause the loader knows (an architecture this transformers lacks) has its own fix (try-out 42)
        fix = loader_hint(e).removeprefix("; ") if not isinstance(e, OSError) else ""
        if StrictDataclassError and isinstance(e, StrictDataclassError):
            fix = "fix that field of its config.json, or set data.separator=eos"
        raise ConfigError(
            f"{key}: cannot read the config of '{spec}' ({first_line(e)}), which data.separator=auto reads for the "
            f"end-of-document id; {fix or 'fix the path or set data.separator=eos'}"
        ) from None
    eos = getattr(text_config(config), "eos_token_id", None)
    if not token_ids_or_none(eos):
        raise ConfigError(  # try-out 127, F8: a ValueError traceback in end_of_document_id
            f"{key}: '{spec}': config.json's eos_token_id is {eos!r}, not a token id or a list of them, which "
            "data.separator=auto reads for the end-of-document id; fix it, or set data.separator=eos"
        )
    return eos


def resolve_boundary(
    separator: str, tokenizer: PreTrainedTokenizerBase, model_eos: Mapping[str, EosValue] | None = None
) -> DocumentBoundary:
    """The document boundary of ``separator`` for this tokenizer and these models.

    Args:
        separator: ``data.separator``: auto, eos, bos_eos or none.
        tokenizer: The shared tokenizer.
        model_eos: Role ('teacher', 'student') → that model's ``eos_token_id`` (int, list or None); used by
            ``auto`` only. Models built from presets take the tokenizer's EOS and need no entry.

    Returns:
        The resolved DocumentBoundary.

    Raises:
        ConfigError: An unknown separator; a tokenizer without the token the rule needs; teacher and student
            that end documents with different ids under ``auto``.
    """
    if separator not in SEPARATORS:
        raise ConfigError(f"data.separator must be one of {', '.join(SEPARATORS)}, got '{separator}'")
    tok_bos, tok_eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if separator == "auto":
        bos = tok_bos if tokenizer_adds_bos(tokenizer) else None
        ends = {role: end_of_document_id(eos, tok_eos) for role, eos in (model_eos or {}).items()}
        distinct = sorted({e for e in ends.values() if e is not None})
        if len(distinct) > 1:
            named = " and ".join(
                f"the {role} with id {e} ({tokenizer.convert_ids_to_tokens(e)!r})" for role, e in ends.items()
            )
            # eos frames with the EOS alone: a BOS the tokenizer adds, which auto keeps, is dropped (try-out 44, F7)
            dropped = (
                f"; it drops the BOS {tokenizer.bos_token!r} the tokenizer adds, which data.separator=bos_eos keeps"
                if bos is not None
                else ""
            )
            raise ConfigError(
                f"data.separator=auto: documents end differently for {named}; set data.separator=eos (the "
                f"tokenizer's EOS{f' {tokenizer.eos_token!r}' if tok_eos is not None else ''} for both{dropped}) "
                "or pick models of one family"
            )
        eos = distinct[0] if distinct else tok_eos
        if eos is None:
            raise ConfigError(
                "data.separator=auto: neither the models nor the tokenizer define an end-of-document token; "
                "set data.separator=none or give the tokenizer an eos_token"
            )
    elif separator == "none":
        bos, eos = None, None
    else:
        if tok_eos is None:
            raise ConfigError(f"data.separator={separator}: the tokenizer has no eos_token; set one")
        if separator == "bos_eos" and tok_bos is None:
            raise ConfigError(
                "data.separator=bos_eos: the tokenizer has no bos_token; use data.separator=eos"
            )
        bos, eos = (tok_bos if separator == "bos_eos" else None), tok_eos
    pad = next((i for i in (eos, tokenizer.pad_token_id, tok_eos, bos) if i is not None), 0)
    boundary = DocumentBoundary(separator, bos, eos, int(pad))
    if separator == "auto" and eos is not None and eos != tok_eos:
        logger.info(
            "documents end with the models' eos id %d (%r), not the tokenizer's eos_token %r",
            eos,
            tokenizer.convert_ids_to_tokens(eos),
            tokenizer.eos_token,
        )
    logger.info("document boundary: %s", boundary.describe())
    return boundary
