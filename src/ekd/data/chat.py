"""Chat rows (``data.format=chat``): conversations rendered with a chat template, loss on assistant tokens only.

A chat row holds a list of ``{role, content}`` messages (``data.messages_field``); a message's other keys
(``tool_calls``, ``tool_call_id``, ``name``, ...) go to the template with it, as ``apply_chat_template`` passes
them, so an assistant turn that calls a tool is rendered (and trained) as the template writes the call, not as
an empty answer; the row's tool definitions (``data.tools_field``) go to it as ``tools``. :class:`ChatRenderer`
renders it with one Jinja chat template into token ids and an *assistant mask*: True on the tokens of every
assistant turn, False on system, user and template markup (tool definitions included). Two ways to find the
assistant tokens, both ending in the same rule (a token is an assistant token when its characters overlap an
assistant span of the rendered text, the rule of transformers' ``return_assistant_tokens_mask``):

- ``generation_markers``: the template wraps assistant output in ``{% generation %}…{% endgeneration %}``;
  ``tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)`` returns the mask.
- ``prefix_diff`` (templates without markers): for every assistant turn ``i`` the conversation is rendered up to
  the assistant header (``messages[:i]`` with ``add_generation_prompt=True``) and up to the end of the turn
  (``messages[:i+1]``); the assistant span is the text between the two. This is valid only when the template
  is *prefix-stable* — each such rendering is a prefix of the next and of the whole conversation — which is
  checked on every row; a template that is not (e.g. one that rewrites earlier turns) is refused in one line.
  The spans are diffed on the rendered text and mapped to tokens through the tokenizer's offsets, so a token
  merged across the header/content boundary does not break the diff.

A chat document is framed by its template alone: no BOS/EOS of ``data.separator`` is added (templates write
their own BOS and end-of-turn tokens). Rows without the messages field or with malformed messages (when the
rows are read), rows the template rejects, rows without an assistant turn and rows whose markers mark nothing
are skipped; :class:`SkippedRows` counts them and reports one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ekd.errors import ConfigError
from ekd.words import one_line

logger = logging.getLogger(__name__)

ASSISTANT = "assistant"
# (what, template) said once per process, however many renderers a run makes (one per data source): "dated"
# (writes today's date), "tools" | "tool_calls" (drops them), "object content of <role>" (writes it as Python)
_SAID: set[tuple[str, str]] = set()
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")  # the regex transformers checks for


@dataclass(frozen=True)
class Message:
    """One message of a conversation: ``role``, ``content`` (None for a tool-calling turn without text; a JSON
    object for a tool result given as one, which templates such as Llama-3.1's write with ``tojson``) and
    ``extra``, the message's other keys in their order with their values as read (``tool_calls``, ``name``, a
    timestamp...): the template gets them as ``apply_chat_template`` would."""

    role: str
    content: str | dict[str, Any] | None
    extra: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The message as ``apply_chat_template`` takes it (keys in the row's order)."""
        return {"role": self.role, "content": self.content, **dict(self.extra)}


def messages_key(messages: Messages) -> str:
    """A conversation's roles and contents as a JSON list ``[[role, content], ...]``: the unit of the held-out
    split, the same as when ekd kept nothing else of a message, so metadata (``name``, ids, tool calls) never
    moves a conversation between train and eval."""
    return json.dumps([[m.role, m.content] for m in messages], ensure_ascii=False, default=str)


def import_key(messages: Messages, tools: Sequence[dict[str, Any]] | None = None) -> str:
    """A conversation's roles, contents and tool calls as JSON, and the row's tool definitions ``tools`` when
    given: what ``ekd cache import`` matches a source row to a training row by (tool calls and definitions make
    two rows with the same texts different; other metadata — ``name``, ids, weights — the source may lack, and
    the tokens are compared after the match anyway). Nulls are dropped at every depth, so a Parquet source
    matches JSONL training rows."""
    rows: list[Any] = []
    for m in messages:
        calls = dict(m.extra).get("tool_calls")
        rows.append([m.role, m.content] if calls is None else [m.role, m.content, calls])
    if tools:
        rows.append(["tools", list(tools)])
    return json.dumps(_without_nulls(rows), ensure_ascii=False, default=str)


Messages = tuple[Message, ...]  # a conversation, in order


MALFORMED = "malformed messages"
MALFORMED_TOOLS = "malformed tools"
# a JSONL row without the field (a column absent from every row is an error instead)
NO_MESSAGES = "no data.messages_field"
NO_ASSISTANT = "no assistant turn"
TEMPLATE_REJECTS = "rejected by the chat template"
NOTHING_MARKED = "no assistant token"


class RejectedRow(ValueError):
    """A chat row that cannot be rendered or carries no assistant token.

    Attributes:
        kind: The generic reason (NO_MESSAGES, MALFORMED, MALFORMED_TOOLS, NO_ASSISTANT, TEMPLATE_REJECTS,
            NOTHING_MARKED); ``str(e)`` is the detailed one.
    """

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


def parse_messages(value: Any, columnar: bool = False) -> Messages:
    """The messages of a ``messages`` value: a list of ``{role, content, ...}`` objects, ``content`` a string
    (or null/absent on a turn with ``tool_calls``); other keys are kept for the template (:class:`Message`).

    Args:
        columnar: The rows come from Parquet or a datasets table, whose struct columns give every message (and
            every nested object, e.g. tool-call arguments) the union of the keys of all rows, null where a row
            has none: those nulls are dropped at every depth. From JSON only a message's own null keys are.

    Raises:
        RejectedRow: The value is not a list of such objects.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        got = "null" if value is None else type(value).__name__
        raise RejectedRow(f"messages is {got}, not a list of {{role, content}} objects", MALFORMED)
    if not value:  # an empty conversation (was dropped as 'shorter than data.min_chars', with no line number)
        raise RejectedRow("messages is an empty list", MALFORMED)
    pairs = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RejectedRow(
                f"message {i} is {type(message).__name__}, not a {{role, content}} object", MALFORMED
            )
        role, content = message.get("role"), message.get("content")
        calls_tools = content is None and bool(message.get("tool_calls"))
        if not isinstance(role, str):
            raise RejectedRow(f"message {i} has no string role", MALFORMED)
        if isinstance(content, dict):  # a tool result as an object: the template writes it (tojson)
            content = _without_nulls(content) if columnar else content
        elif not (isinstance(content, str) or calls_tools):
            got = "no content" if content is None else f"content of type {type(content).__name__}"
            raise RejectedRow(
                f"message {i} ({role}) has {got}, not a string (or an object; null with tool_calls)",
                MALFORMED,
            )
        rest = tuple(
            (k, _without_nulls(v) if columnar else v)
            for k, v in message.items()
            if k not in ("role", "content") and v is not None
        )
        pairs.append(Message(role, content, rest))
    return tuple(pairs)


def parse_tools(value: Any, columnar: bool = False) -> tuple[dict[str, Any], ...] | None:
    """A row's tool definitions (``data.tools_field``) as ``apply_chat_template(tools=...)`` takes them: a list of
    JSON-schema objects, or a JSON string holding one (several function-calling datasets store them so: it is
    passed exactly as written, its nulls and key order kept); None for null, ``[]`` or an empty string (no
    tools). ``columnar``: a struct column's objects, whose nulls are dropped as in :func:`parse_messages`.

    Raises:
        RejectedRow: The value is neither (MALFORMED_TOOLS).
    """
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RejectedRow(
                f"tools is a string but not JSON ({e.msg} at character {e.pos})", MALFORMED_TOOLS
            ) from None
        columnar = False  # the string's own nulls are the row's, not a struct column's union of keys
    if value is None:
        return None
    if (
        isinstance(value, bytes)
        or not isinstance(value, Sequence)
        or not all(isinstance(t, dict) for t in value)
    ):
        got = "a list with non-objects" if isinstance(value, list | tuple) else type(value).__name__
        raise RejectedRow(f"tools is {got}, not a list of tool definitions (JSON objects)", MALFORMED_TOOLS)
    return tuple(_without_nulls(t) if columnar else t for t in value) or None


def _without_nulls(value: Any) -> Any:
    """``value`` with the null entries of its objects dropped at every depth (lists keep their items)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_nulls(v) for v in value]
    return value


@dataclass
class SkippedRows:
    """Count of skipped rows by reason, and the first one of each reason, for a one-line report.

    Attributes:
        what: What was skipped, e.g. ``data.format=chat: rows``.
        count: Rows skipped.
        seen: Rows looked at (skipped or not).
        reasons: Generic reason (``RejectedRow.kind``) → count.
        first_of: Generic reason → (``doc_id``, reason) of its first row, in the order the reasons first came.
        documents: Documents tokenized (chat rows and text documents alike), for :attr:`tokenless`.
        tokenless: Of those, documents with text whose tokenization gave no token (``tokenless_first`` the first's
            ``doc_id``): a tokenizer that reads none of the text (try-out 147, F1), said by
            :func:`~ekd.data.packing.settle_skipped`; ``tokenizer`` names its class, ``split`` the split.
    """

    what: str
    count: int = 0
    seen: int = 0
    reasons: Counter = field(default_factory=Counter)
    first_of: dict[str, tuple[str, str]] = field(default_factory=dict)
    documents: int = 0
    tokenless: int = 0
    tokenless_first: str = ""
    tokenizer: str = ""
    split: str = ""

    @property
    def first(self) -> str:
        """``doc_id`` of the first skipped row (``chat.jsonl:4``: line 4); '' when none was."""
        return next(iter(self.first_of.values()), ("", ""))[0]

    @property
    def first_reason(self) -> str:
        """Why the first skipped row was skipped; '' when none was."""
        return next(iter(self.first_of.values()), ("", ""))[1]

    def add(self, doc_id: str, rejected: RejectedRow) -> None:
        """Count one skipped row."""
        self.count += 1
        self.reasons[rejected.kind] += 1
        # the row's own text kept on one line (a role "\n" broke it: tests/test_chat_data.py, session 29)
        self.first_of.setdefault(rejected.kind, (doc_id, one_line(str(rejected))))

    def line(self) -> str:
        """``<what>: skipped 3 of 40 (2 rejected by the chat template, 1 no assistant turn); first of each:
        a.jsonl:4 (<reason>); a.jsonl:9 (<reason>)`` — one row per reason, so a rarer reason is not hidden behind
        the first row's (try-out 74, F1); ``first: a.jsonl:4 (<reason>)`` when all share one."""
        kinds = [kind for kind, _ in self.reasons.most_common()]
        firsts = "; ".join("{} ({})".format(*self.first_of[kind]) for kind in kinds)
        return (
            f"{self.what}: skipped {self.count} of {self.seen} ({self.kinds()}); "
            f"{'first' if len(kinds) == 1 else 'first of each'}: {firsts}"
        )

    def kinds(self) -> str:
        """``2 rejected by the chat template, 1 no assistant turn``: the reasons, most frequent first."""
        return ", ".join(f"{n} {kind}" for kind, n in self.reasons.most_common())

    def report(self) -> None:
        """Log :meth:`line` as one warning, when any row was skipped."""
        if self.count:
            logger.warning("%s", self.line())


def chat_template_of(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The tokenizer's chat template (its default one when it has several), or None."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def read_template_option(value: str) -> str:
    """``data.chat_template``: a Jinja string, or the path of a file holding one (read as UTF-8).

    Raises:
        ConfigError: The value does not look like a template and names no readable UTF-8 file (one line with
            the key, the path as resolved and the fix).
    """
    if "{%" in value or "{{" in value:
        return value
    path = Path(value).expanduser()
    where = f"data.chat_template={value}"
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "names no file"
        raise ConfigError(
            f"{where} {problem} ({path.resolve()}) and is not a Jinja template (no '{{%' or '{{{{'); "
            "fix the path (relative paths start at the working directory) or give the template text"
        )
    try:
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark is no template text
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{where}: cannot read {path.resolve()} ({type(e).__name__}); give a readable UTF-8 text file"
        ) from None


@dataclass(frozen=True)
class RenderedChat:
    """One rendered conversation.

    Attributes:
        input_ids: (S,) token ids of the whole conversation, as ``apply_chat_template(tokenize=True)`` gives.
        assistant_mask: (S,) True on the tokens of assistant turns.
    """

    input_ids: list[int]
    assistant_mask: list[bool]


class ChatRenderer:
    """Renders conversations with one chat template into token ids and an assistant mask.

    Args:
        tokenizer: A fast tokenizer (offsets are needed to map assistant text to tokens).
        template: The Jinja chat template; default the tokenizer's own.
        source: Where the template comes from, named in errors (e.g. ``model.tokenizer``).

    Raises:
        ConfigError: No template; a slow tokenizer.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template: str | None = None, source: str = "the tokenizer"
    ) -> None:
        template = template or chat_template_of(tokenizer)
        if not template:
            raise ConfigError(
                f"data.format=chat: {source} has no chat template; set data.chat_template to a Jinja template "
                "(the text or a file), or data.chat_template_from to a model whose tokenizer has one"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"data.format=chat needs a fast tokenizer (its offsets locate assistant tokens); {source} is a "
                "slow one: save it with a tokenizer.json or load a fast version"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.method = "generation_markers" if GENERATION_MARKER.search(template) else "prefix_diff"
        self._closing: str | None = None  # closing_text(), probed once
        self._probed: dict[str, bool] = {}  # a probe's name → whether the template does what it looks for
        if "strftime_now" in template and ("dated", template) not in _SAID:  # Llama-3.1/3.2: "Today Date: …"
            _SAID.add(("dated", template))
            logger.warning(
                "data.format=chat: the chat template (%s) writes today's date (strftime_now), so the same rows "
                "render other tokens on another day: a token store, a teacher cache or eval sets made today do "
                "not match tomorrow's; set data.chat_template to a copy that writes a fixed date",
                source,
            )

    def __call__(
        self, messages: Messages, doc_id: str = "", tools: Sequence[dict[str, Any]] | None = None
    ) -> RenderedChat:
        """Render one conversation, with the row's tool definitions ``tools`` (:func:`parse_tools`) if any.

        Raises:
            RejectedRow: No assistant turn; the template raises on the row; no token is marked.
            ConfigError: The template has no generation markers and is not prefix-stable on this row.
        """
        if not any(m.role == ASSISTANT for m in messages):
            roles = ", ".join(dict.fromkeys(m.role for m in messages)) or "none"
            raise RejectedRow(f"no assistant turn (roles: {roles})", NO_ASSISTANT)
        conversation = [m.as_dict() for m in messages]
        tools = list(tools) if tools else None
        if tools:
            self._say_unwritten("tools", doc_id)
        if any(dict(m.extra).get("tool_calls") for m in messages):
            self._say_unwritten("tool_calls", doc_id)
        if role := next((m.role for m in messages if isinstance(m.content, dict)), None):
            self._say_object_written_as_python(role, doc_id)
        if self.method == "generation_markers":
            rendered = self._with_markers(conversation, tools)
        else:
            rendered = self._with_prefix_diff(conversation, doc_id, tools)
        if not any(rendered.assistant_mask):
            raise RejectedRow("the rendering marks no assistant token", NOTHING_MARKED)
        return rendered

    def _say_unwritten(self, what: str, doc_id: str) -> None:
        """Warn once when the template drops ``what`` — a row's tool definitions (``tools``) or an assistant
        turn's ``tool_calls`` — found by rendering a probe with a named tool and looking for its name (try-out
        24: a template that only mentions ``tools``, such as Mistral v0.3's, passed a search of its text; a
        Llama-3.0 template trained a tool-calling turn as an empty answer without a word)."""
        name = f"ekd_probe_{what}"
        probe: list[dict] = [{"role": "user", "content": "ekd probe question"}]
        tools = None
        if what == "tools":
            tools = [
                {"type": "function", "function": {"name": name, "description": "ekd probe", "parameters": {}}}
            ]
            probe.append({"role": ASSISTANT, "content": "ekd probe answer"})
        else:
            call = {"type": "function", "function": {"name": name, "arguments": {}}}
            probe.append({"role": ASSISTANT, "content": None, "tool_calls": [call]})
        if self._first_finding(what, probe, lambda text: name not in text, tools):
            logger.warning(
                "data.format=chat: row %s has %s, which the chat template does not write: %s; use a template "
                "that writes them (the model's own, if it was trained with tools)",
                doc_id,
                "tool definitions (data.tools_field)"
                if what == "tools"
                else "assistant tool calls (tool_calls)",
                "the rows are rendered without them"
                if what == "tools"
                else "a turn that only calls a tool is trained as an empty answer",
            )

    def _first_finding(self, what: str, probe: list[dict], found, tools: list[dict] | None = None) -> bool:
        """Whether ``found`` holds of this template's rendering of ``probe`` (not when the template refuses the
        probe: those rows are skipped and counted, said there) — rendered once per renderer, and True only the
        first time in the process for this template, so the caller's warning is said once."""
        if what in self._probed or (what, self.template) in _SAID:
            return False
        try:
            hit = found(self._render(probe, tools=tools))
        except RejectedRow:
            hit = False
        self._probed[what] = hit
        if hit:
            _SAID.add((what, self.template))
        return hit

    def _say_object_written_as_python(self, role: str, doc_id: str) -> None:
        """Warn once when the template writes a message content given as a JSON object (a tool result) as
        Python text — ``{'temp': 10}``, as Qwen2.5's ``{{ message.content }}`` does, where Llama-3.1's writes
        ``tojson`` — found by rendering a probe object in a ``role`` message (try-out 25). The rows render as
        ``apply_chat_template`` renders them; a JSON string is written as given."""
        what = f"object content of {role}"
        call = {"type": "function", "function": {"name": "ekd_probe_tool", "arguments": {}}}
        probe = [
            {"role": "user", "content": "ekd probe question"},
            {"role": ASSISTANT, "content": None, "tool_calls": [call]},
            {"role": role, "content": {"ekd_probe_key": "ekd probe value"}},
            {"role": ASSISTANT, "content": "ekd probe answer"},
        ]
        if self._first_finding(what, probe, lambda text: "{'ekd_probe_key': 'ekd probe value'}" in text):
            logger.warning(
                "data.format=chat: row %s gives a %s message's content as a JSON object, which the chat template "
                "writes as Python text ({'key': 'value'}, not JSON); give such contents as JSON strings if the "
                "model should read JSON",
                doc_id,
                role,
            )

    def closing_text(self) -> str:
        """Text the template writes after the last message only (Phi-3: its EOS), '' for most templates.

        From three probe renderings (a user turn, then an assistant turn, then a user turn): '' when each is a
        prefix of the next; else the shortest text all three end with, starting at a token of the first (so
        ``'<|endoftext|>'``, not the ``'endoftext|>'`` that ``'<|'`` shared with the next turn's marker would
        allow), whose removal makes each a prefix of the next. A template that rewrites earlier turns renders
        these probes prefix-stably (nothing to rewrite in them), so it gets '' and its real rows are still
        refused."""
        if self._closing is None:
            self._closing = self._probe_closing()
        return self._closing

    def _probe_closing(self) -> str:
        probe = [
            {"role": "user", "content": "ekd probe one"},
            {"role": ASSISTANT, "content": "ekd probe two"},
            {"role": "user", "content": "ekd probe three"},
        ]
        try:
            renders = [self._render(probe[:n]) for n in (1, 2, 3)]
        except RejectedRow:
            return ""
        offsets = self.tokenizer(renders[0], add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        token_starts = {start for start, _ in offsets}
        for n in range(0, min(map(len, renders)) + 1):
            closing = renders[0][len(renders[0]) - n :]
            if not all(r.endswith(closing) for r in renders):
                break
            if n and len(renders[0]) - n not in token_starts:
                continue
            a, b, c = (r[: len(r) - n] for r in renders)
            if b.startswith(a) and c.startswith(b):
                return closing
        return ""

    def end_of_turn_ids(self) -> list[int]:
        """The special token the template writes right after an assistant turn's content (``<|eot_id|>``,
        ``<|im_end|>``, ``<end_of_turn>``, ``<|end|>``), found by rendering a probe exchange; [] when it writes
        none there or rejects the probe. On-policy turns end at it even when the student's own config names
        only its EOS (a base student taught on an instruct teacher's template)."""
        answer = "ekd probe answer"
        probe = [{"role": "user", "content": "ekd probe question"}, {"role": ASSISTANT, "content": answer}]
        try:
            text = self._render(probe)
        except RejectedRow as e:  # review 126, S4: said, not left for on-policy turns to run on to the EOS
            logger.info(
                "the chat template rejects a plain user/assistant exchange (%s): no end-of-turn token is known, so "
                "generated turns end at the EOS only",
                e,
            )
            return []
        at = text.find(answer)
        if at < 0:
            return []
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        after = [
            i
            for i, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"])
            if start >= at + len(answer)
        ]
        special = set(self.tokenizer.all_special_ids) | {
            i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special
        }
        return after[:1] if after and after[0] in special else []

    def _render(
        self, conversation: list[dict], add_generation_prompt: bool = False, tools: list[dict] | None = None
    ) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                conversation,
                tools=tools,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except (
            Exception
        ) as e:  # jinja's TemplateError (raise_exception), TypeError, ... : the row is rejected
            raise RejectedRow(f"the chat template raised: {_first_line(e)}", TEMPLATE_REJECTS) from None

    def _with_markers(self, conversation: list[dict], tools: list[dict] | None) -> RenderedChat:
        try:
            out = self.tokenizer.apply_chat_template(
                conversation,
                tools=tools,
                chat_template=self.template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
        except Exception as e:
            raise RejectedRow(f"the chat template raised: {_first_line(e)}", TEMPLATE_REJECTS) from None
        return RenderedChat(list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]])

    def _with_prefix_diff(
        self, conversation: list[dict], doc_id: str, tools: list[dict] | None
    ) -> RenderedChat:
        full = self._render(conversation, tools=tools)
        spans = []  # (start, end) characters of each assistant turn in `full`
        for i, message in enumerate(conversation):
            if message["role"] != ASSISTANT:
                continue
            header = self._header(conversation, i, tools)  # up to the assistant header
            turn = self._render(conversation[: i + 1], tools=tools)  # up to the end of the assistant turn
            end = _turn_end(turn, full, self.closing_text())
            if not (turn.startswith(header) and end is not None):
                bad = header if not turn.startswith(header) else turn
                raise ConfigError(
                    f"data.format=chat: the chat template has no {{% generation %}} markers and is not "
                    f"prefix-stable (row {doc_id}: rendering up to message {i} is not a prefix of the whole "
                    f"conversation: {_parting(bad, full if bad is turn else turn)}), so assistant tokens cannot "
                    "be located; wrap assistant content in {% generation %}…{% endgeneration %} in "
                    "data.chat_template (TRL ships *_training.jinja versions of common templates that do)"
                )
            spans.append((len(header), end))
        encoded = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        return RenderedChat(list(encoded["input_ids"]), overlap_mask(encoded["offset_mapping"], spans))

    def _header(self, conversation: list[dict], i: int, tools: list[dict] | None) -> str:
        """The rendering of ``conversation`` up to the header of its assistant turn ``i``: ``messages[:i]`` with
        the generation prompt. A conversation that opens with an assistant turn (a greeting) has no messages
        before it, and transformers refuses to render an empty conversation: its header is what the template
        writes before that turn's content, found by rendering the turn with a marker for its content (the
        row was skipped as 'rejected by the chat template'; try-out 74, F1)."""
        if i:
            return self._render(conversation[:i], True, tools)
        marker = "ekd-opening-turn-marker"
        probe = self._render([{**conversation[0], "content": marker}], tools=tools)
        if marker not in probe:
            raise RejectedRow(
                "the chat template does not write an opening assistant turn's content as given, so its tokens "
                "cannot be located (wrap assistant content in {% generation %}…{% endgeneration %})",
                TEMPLATE_REJECTS,
            )
        return probe[: probe.index(marker)]


def _turn_end(turn: str, full: str, closing: str) -> int | None:
    """Where the rendering ``turn`` (the conversation up to an assistant turn) ends in the whole rendering
    ``full``: ``len(turn)`` when it is a prefix; else, when ``turn`` ends with the template's ``closing`` text
    (:meth:`ChatRenderer.closing_text`) and is a prefix without it, where that text starts. None: not
    prefix-stable."""
    if full.startswith(turn):
        return len(turn)
    if closing and turn.endswith(closing) and full.startswith(turn[: -len(closing)]):
        return len(turn) - len(closing)
    return None


def _parting(a: str, b: str, width: int = 24) -> str:
    """Where two renderings part: ``'…<|end|><|endoftext|>' vs '…<|end|><|user|>'`` (``width`` characters
    around the first difference)."""
    k = len(os.path.commonprefix([a, b]))
    start = max(0, k - width // 2)
    cut = "…" if start else ""
    return f"{cut + a[start : k + width // 2]!r} vs {cut + b[start : k + width // 2]!r}"


def overlap_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token: whether its characters ``[start, end)`` overlap any span ``[a, b)`` (a zero-width token
    counts at its start). The rule of transformers' ``return_assistant_tokens_mask``."""
    mask = []
    for start, end in offsets:
        end = max(end, start + 1)
        mask.append(any(start < b and end > a for a, b in spans if b > a))
    return mask


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = [
    "ChatRenderer",
    "Messages",
    "RejectedRow",
    "RenderedChat",
    "SkippedRows",
    "chat_template_of",
    "overlap_mask",
    "parse_messages",
    "parse_tools",
    "read_template_option",
]
