"""Which chat template a ``data.format=chat`` run renders with, settled once before packing.

In order: ``data.chat_template`` (a Jinja string or file: the declared template, also the fallback for a
tokenizer without one); ``data.chat_template_from=teacher|student`` (that model's tokenizer's template); else
the run tokenizer's own template, which must agree with the template of every real (non-preset) teacher and
student the run loads: when the template texts differ, the first rows are rendered with each and their token
ids and assistant masks compared; a difference is refused in one line that names ``data.chat_template_from``.
The settled template is set on the run tokenizer, so it travels with it (packing, the exported student,
``ekd eval``). A declared template file is read and compiled by :func:`check_declared_template` before any
expensive work (reading the corpus, training a tokenizer), and a run tokenizer that has to supply the template
but has none is refused by :func:`check_tokenizer_template` as soon as it is loaded — at data preparation, not in config validation, so that ``ekd eval``
of a finished run, which renders with the student's saved template, does not need the file any more.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from ekd.config import Config
from ekd.data.chat import ChatRenderer, RejectedRow, chat_template_of, read_template_option
from ekd.data.document import Document
from ekd.errors import ConfigError

logger = logging.getLogger(__name__)

AGREEMENT_ROWS = 8  # rows rendered with both templates when their texts differ


def check_declared_template(cfg: Config) -> None:
    """Read and compile ``data.chat_template`` now when a ``data.format=chat`` run declares one, so that a
    missing or unreadable file, or a Jinja syntax error, is reported before the corpus is read and a tokenizer
    trained (try-out 40: a syntax error came out as every row rejected by the template, after reading them all).

    Raises:
        ConfigError: The value is neither a template nor a readable file (see
            :func:`~ekd.data.chat.read_template_option`); the template does not compile.
    """
    if cfg.data.format == "chat" and cfg.data.chat_template:
        template = read_template_option(cfg.data.chat_template)
        if (error := jinja_syntax_error(template)) is not None:
            where = "" if template == cfg.data.chat_template else f" ({cfg.data.chat_template})"
            raise ConfigError(
                f"data.chat_template{where}: the template does not compile: Jinja syntax error at {error}; fix "
                "the template"
            )


def check_tokenizer_template(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> None:
    """With ``data.format=chat`` and neither ``data.chat_template`` nor ``data.chat_template_from``, the run
    renders with the tokenizer's own template: refuse a tokenizer without one as soon as it is loaded, before
    the corpus is read (try-out 40: 200,000 rows were read, 20 s, to say so).

    Raises:
        ConfigError: The tokenizer has no chat template (or is a slow one), as :class:`ChatRenderer` says.
    """
    data = cfg.data
    if data.format == "chat" and not data.chat_template and not data.chat_template_from:
        ChatRenderer(tokenizer, source=f"the tokenizer (model.tokenizer={cfg.model.tokenizer})")


def jinja_syntax_error(template: str) -> str | None:
    """Where and why ``template`` fails to compile as transformers compiles chat templates (its extensions:
    ``{% generation %}``, loop controls), as ``line 1: unexpected '}'``; None when it compiles (or this
    transformers has no such compiler: a row then reports the error when it is rendered)."""
    import jinja2

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    try:
        _compile_jinja_template(template)
    except jinja2.TemplateSyntaxError as e:
        return f"line {e.lineno}: {e.message}"
    return None


def settle_chat_template(
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Document],
    role_tokenizers: dict[str, PreTrainedTokenizerBase],
) -> str:
    """Choose the run's chat template, set it on ``tokenizer`` and return it.

    Args:
        cfg: The run config (``data.chat_template``, ``data.chat_template_from``, ``model.tokenizer``).
        tokenizer: The run tokenizer (shared by teacher and student).
        rows: Training documents; the first :data:`AGREEMENT_ROWS` chat rows are rendered to compare templates.
        role_tokenizers: 'teacher' / 'student' → that real model's own tokenizer (presets have none).

    Raises:
        ConfigError: No template anywhere; ``chat_template_from`` naming a preset model; teacher and student
            templates that render a row differently with no ``chat_template_from``.
    """
    data = cfg.data
    if data.chat_template:
        template, source = read_template_option(data.chat_template), "data.chat_template"
    elif data.chat_template_from:
        role = data.chat_template_from
        if role not in role_tokenizers:
            raise ConfigError(
                f"data.chat_template_from={role}: model.{role} is a preset (or not loaded) and has no tokenizer "
                "of its own; name the other model or set data.chat_template"
            )
        source = f"the {role} tokenizer (model.{role})"
        template = ChatRenderer(role_tokenizers[role], source=source).template
    else:
        source = f"the tokenizer (model.tokenizer={cfg.model.tokenizer})"
        template = ChatRenderer(tokenizer, source=source).template
        _check_agreement(tokenizer, template, rows, role_tokenizers)
    renderer = ChatRenderer(tokenizer, template, source)  # checks a fast tokenizer
    own = chat_template_of(tokenizer)
    if data.chat_template and own and own != template:  # e.g. a TRL *_training.jinja with generation markers
        logger.info(
            "data.format=chat: the exported student's tokenizer carries data.chat_template, not the tokenizer's "
            "own template (model.tokenizer=%s); save that one back into runs/<name>/student to serve with it",
            cfg.model.tokenizer,
        )
    tokenizer.chat_template = template
    logger.info("data.format=chat: chat template from %s; assistant tokens by %s", source, renderer.method)
    return template


def _check_agreement(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    rows: Sequence[Document],
    role_tokenizers: dict[str, PreTrainedTokenizerBase],
) -> None:
    """Refuse a real model whose own template renders one of the first chat rows unlike ``template``."""
    chat_rows = [d for d in rows if d.messages is not None][:AGREEMENT_ROWS]
    ours = ChatRenderer(tokenizer, template)
    for role, own in role_tokenizers.items():
        theirs_text = chat_template_of(own)
        if theirs_text == template:
            continue
        if theirs_text is None:
            logger.info("data.format=chat: the %s tokenizer has no chat template; using the run's", role)
            continue
        theirs = ChatRenderer(tokenizer, theirs_text)  # the shared vocabulary, the other template
        for doc in chat_rows:
            mine, other = _render_or_none(ours, doc), _render_or_none(theirs, doc)
            if mine != other:
                raise ConfigError(
                    f"data.format=chat: the {role}'s chat template {_disagreement(mine, other, doc.doc_id)}; set "
                    "data.chat_template_from=teacher or student (or data.chat_template) to name the template to use"
                )


def _disagreement(ours: tuple | None, theirs: tuple | None, row: str) -> str:
    """How another template's rendering ``theirs`` of ``row`` differs from the run template's ``ours`` (each
    :func:`_render_or_none`), as the refusal's clause. Same tokens, other trained ones, is said so, with the
    counts (try-out 40: a ``{% generation %}`` copy of the same template, as TRL's ``*_training.jinja``, which
    leaves out the newline after the end-of-turn token, was said to render the row unlike: its text was
    byte-identical)."""
    if theirs is None or ours is None:
        return (
            f"rejects row {row}, which the run tokenizer's renders"
            if theirs is None
            else (f"renders row {row}, which the run tokenizer's rejects")
        )
    if ours[0] != theirs[0]:
        return f"renders row {row} unlike the run tokenizer's"
    at = next(i for i, (a, b) in enumerate(zip(ours[1], theirs[1])) if a != b)
    return (
        f"renders row {row} to the same tokens as the run tokenizer's but trains others: {sum(theirs[1])} "
        f"assistant tokens against {sum(ours[1])}, the first difference at token {at}"
    )


def _render_or_none(renderer: ChatRenderer, doc: Document):
    try:
        rendered = renderer(doc.messages, doc.doc_id, doc.tools)
    except RejectedRow:
        return None
    return rendered.input_ids, rendered.assistant_mask


__all__ = [
    "AGREEMENT_ROWS",
    "check_declared_template",
    "check_tokenizer_template",
    "jinja_syntax_error",
    "settle_chat_template",
]
