"""data.format=chat: conversations rendered with a chat template, CE and KD on assistant tokens only.

The expected tokens and labels come from an independent rendering in this file: each message is tokenized as
``<|role|>`` (one special token) · content · ``<|end|>``, without Jinja and without ekd's renderer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ekd.cli import main
from ekd.config import Config, ConfigError, DataConfig, load_config
from ekd.data import IGNORE_INDEX, collate, load_documents, load_splits, pack_documents
from ekd.data.chat import ChatRenderer, Message, RejectedRow, parse_messages
from ekd.data.chat_template import settle_chat_template
from ekd.data.collate import document_positions
from ekd.data.document import Document
from ekd.data.tokenizer import train_bpe_tokenizer
from ekd.errors import EkdError
from tiny import tiny_overrides

ROLES = ("system", "user", "assistant")
SPECIAL = [f"<|{r}|>" for r in ROLES] + ["<|end|>"]
WORDS = [
    "hello",
    "there",
    "how",
    "are",
    "you",
    "fine",
    "thanks",
    "and",
    "what",
    "is",
    "the",
    "value",
    "of",
    "items",
    "in",
    "a",
    "list",
    "return",
    "sorted",
]

# A ChatML-like template without newlines: every role boundary is a special token, so tokenizing the pieces
# apart (the reference below) gives the same ids as tokenizing the whole rendering.
MARKED = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PLAIN = MARKED.replace("{% generation %}", "").replace("{% endgeneration %}", "")
# Rejects the 'tool' role, as many real templates reject what they do not know.
STRICT = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{% endfor %}" + PLAIN
)
# Rewrites earlier assistant turns (as templates that drop past reasoning do): not prefix-stable.
UNSTABLE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['role'] == 'assistant' and not loop.last %}hello{% else %}{{ m['content'] }}{% endif %}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tok():
    """A byte-level BPE with the four role/turn markers as special tokens, no chat template."""
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60)]
    tok = train_bpe_tokenizer(texts, 320)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    return tok


def conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Multi-turn conversations: an optional system message, then 1–3 user/assistant exchanges."""
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))

    rows = []
    for _ in range(n):
        messages = [{"role": "system", "content": sentence()}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            messages += [
                {"role": "user", "content": sentence()},
                {"role": "assistant", "content": sentence()},
            ]
        rows.append(messages)
    return rows


def reference(tok, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Independent rendering: ids and assistant flags, piece by piece (assistant: content and its <|end|>)."""
    ids: list[int] = []
    flags: list[bool] = []
    end = tok.convert_tokens_to_ids("<|end|>")
    for m in messages:
        content = tok(m["content"], add_special_tokens=False)["input_ids"]
        is_assistant = m["role"] == "assistant"
        ids += [tok.convert_tokens_to_ids(f"<|{m['role']}|>"), *content, end]
        flags += [False] + [is_assistant] * (len(content) + 1)
    return ids, flags


def write_chat_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps({"messages": r, "id": i}) + "\n" for i, r in enumerate(rows)))
    return path


def chat_cfg(**kw) -> DataConfig:
    return DataConfig(format="chat", **kw)


# ---------------------------------------------------------------------------------------------------------
# Rendering and labels
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [MARKED, PLAIN], ids=["generation_markers", "prefix_diff"])
def test_labels_are_set_exactly_on_assistant_tokens_through_packing(tmp_path, chat_tok, template):
    rows = conversations(12)
    docs = load_documents(str(write_chat_jsonl(tmp_path / "chat.jsonl", rows)), chat_cfg())
    assert [d.doc_id for d in docs] == [f"chat.jsonl:{i + 1}" for i in range(12)]
    chat_tok.chat_template = template
    T = 16  # small blocks: documents and assistant turns are cut by block boundaries
    blocks = pack_documents(docs, chat_tok, T, document_attention="isolated")
    method = ChatRenderer(chat_tok).method
    assert method == ("generation_markers" if template == MARKED else "prefix_diff")

    stream, flags, starts = [], [], []
    for r in rows:
        ids, f = reference(chat_tok, r)
        stream += ids
        flags += f
        starts += [True] + [False] * (len(ids) - 1)
    N = len(stream) // T
    assert len(blocks) == N
    assert blocks.input_ids.flatten().tolist() == stream[: N * T]  # no BOS/EOS added around chat documents
    batch = collate(blocks, torch.arange(N))
    expected = torch.full((N, T), IGNORE_INDEX)
    for r in range(N):
        for t in range(T - 1):
            j = r * T + t + 1  # the token position t predicts
            if flags[j]:
                expected[r, t] = stream[j]
    assert torch.equal(batch.labels, expected)
    assert int(batch.valid.sum()) == sum(flags[r * T + t] for r in range(N) for t in range(1, T))
    # isolation: positions restart at every conversation, exactly where the reference starts one
    want_starts = torch.tensor(starts[: N * T]).view(N, T)
    assert torch.equal(batch.position_ids, document_positions(want_starts))


def test_both_ways_of_finding_assistant_tokens_agree_on_every_row(chat_tok):
    for messages in conversations(20, seed=3):
        pairs = parse_messages(messages)
        marked, plain = ChatRenderer(chat_tok, MARKED)(pairs), ChatRenderer(chat_tok, PLAIN)(pairs)
        assert marked == plain
        assert (marked.input_ids, marked.assistant_mask) == reference(chat_tok, messages)


@pytest.mark.parametrize("system", [False, True], ids=["bare", "default-system-prompt"])
def test_a_conversation_opening_with_an_assistant_turn_is_trained_on_every_assistant_turn(chat_tok, system):
    """A greeting before the user's first message has no messages before it: transformers refuses to render
    an empty conversation, and prefix_diff skipped such rows as 'rejected by the chat template' (try-out 74, F1).
    With a template that writes a default system prompt before a conversation without one (Qwen2.5's), that
    prompt is part of the opening turn's header, not of its answer."""
    default = (
        "{% if messages[0]['role'] != 'system' %}<|system|>you are fine<|end|>{% endif %}" if system else ""
    )
    messages = [
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "fine thanks"},
    ]
    pairs = parse_messages(messages)
    marked, plain = (
        ChatRenderer(chat_tok, default + MARKED)(pairs),
        ChatRenderer(chat_tok, default + PLAIN)(pairs),
    )
    ids, flags = reference(chat_tok, messages)
    if system:
        sys_ids, sys_flags = reference(chat_tok, [{"role": "system", "content": "you are fine"}])
        ids, flags = sys_ids + ids, sys_flags + flags
    assert (plain.input_ids, plain.assistant_mask) == (ids, flags)
    assert marked == plain


def test_a_template_that_is_not_prefix_stable_is_refused_in_one_line(chat_tok):
    rows = conversations(4)
    multi = next(r for r in rows if sum(m["role"] == "assistant" for m in r) > 1)
    with pytest.raises(ConfigError, match="not prefix-stable") as e:
        ChatRenderer(chat_tok, UNSTABLE)(parse_messages(multi), "chat.jsonl:3")
    assert "\n" not in str(e.value) and "chat.jsonl:3" in str(e.value) and "generation" in str(e.value)
    assert "' vs '…|assistant|>hello<|end|>'" in str(e.value)  # where the renderings part


def test_a_template_that_closes_the_conversation_is_prefix_stable_up_to_its_closing_text(chat_tok):
    """Try-out 18: Phi-3's template writes EOS after the last message only, so every rendering up to an inner
    assistant turn ends with an EOS the whole conversation has elsewhere, and every multi-turn row was refused.
    Such closing text (what the whole rendering ends with too) ends the partial rendering; the inner turns' spans
    are what they are in the whole conversation."""
    closing = PLAIN + "{% if not add_generation_prompt %}<|system|>{% endif %}"  # a closing marker
    rows = conversations(6)
    multi = next(r for r in rows if sum(m["role"] == "assistant" for m in r) > 1)
    rendered = ChatRenderer(chat_tok, closing)(parse_messages(multi))
    ids, flags = reference(chat_tok, multi)
    system = chat_tok.convert_tokens_to_ids("<|system|>")
    assert rendered.input_ids == ids + [system]
    assert rendered.assistant_mask == flags + [True]  # the closing marker ends the last assistant span
    assert (
        ChatRenderer(chat_tok, closing).closing_text() == "<|system|>"
    )  # not the 'system|>' '<|' would allow


def test_a_rewriting_template_is_refused_even_when_two_answers_are_the_same(chat_tok):
    """Try-out 19: the closing-text rule read per row took a Qwen3-style rewrite (the last assistant turn rendered
    with its reasoning, earlier ones without) for closing text when both answers were equal, and the first turn
    got no loss. The closing text is the template's, probed once: this template has none, so the row is refused."""
    thinking = (
        "{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] == 'assistant' and loop.last %}value {% endif %}"
        "{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    same = [
        {"role": "user", "content": "what is the value"},
        {"role": "assistant", "content": "a list"},
        {"role": "user", "content": "and the items"},
        {"role": "assistant", "content": "a list"},
    ]
    renderer = ChatRenderer(chat_tok, thinking)
    assert renderer.closing_text() == ""
    with pytest.raises(ConfigError, match="not prefix-stable"):
        renderer(parse_messages(same), "chat.jsonl:1")


@pytest.mark.parametrize("family", ["llama3", "gemma3", "qwen3_instruct_2507"])
def test_prefix_diff_on_real_templates_equals_their_generation_marked_versions(chat_tok, family):
    """TRL ships real chat templates with training variants that add {% generation %} markers: on those whose
    markers wrap exactly what follows the generation prompt, both ways find the same tokens."""
    import copy

    trl = pytest.importorskip("trl")
    folder = Path(trl.__file__).parent / "chat_templates"
    plain, marked = (
        (folder / f"{family}.jinja").read_text(),
        (folder / f"{family}_training.jinja").read_text(),
    )
    tok = copy.deepcopy(chat_tok)
    markers = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": [*markers, "<start_of_turn>", "<end_of_turn>"]})
    for messages in conversations(10, seed=7):
        pairs = parse_messages(messages)
        by_diff, by_markers = ChatRenderer(tok, plain)(pairs), ChatRenderer(tok, marked)(pairs)
        assert by_diff == by_markers
        assert 0 < sum(by_diff.assistant_mask) < len(by_diff.input_ids)


def test_real_template_that_rewrites_past_turns_is_refused_and_its_marked_version_works(chat_tok):
    import copy

    trl = pytest.importorskip("trl")
    folder = Path(trl.__file__).parent / "chat_templates"
    tok = copy.deepcopy(chat_tok)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]}
    )
    multi = parse_messages(next(r for r in conversations(6) if sum(m["role"] == "assistant" for m in r) > 1))
    with pytest.raises(ConfigError, match="not prefix-stable"):
        ChatRenderer(tok, (folder / "qwen3.jinja").read_text())(multi, "row")
    rendered = ChatRenderer(tok, (folder / "qwen3_training.jinja").read_text())(multi, "row")
    assert any(rendered.assistant_mask)


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


def test_parquet_and_hf_dataset_rows_read_like_jsonl(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = conversations(5)
    from_jsonl = load_documents(str(write_chat_jsonl(tmp_path / "c.jsonl", rows)), chat_cfg())
    pq.write_table(pa.table({"conv": rows}), tmp_path / "c.parquet")
    from_parquet = load_documents(str(tmp_path / "c.parquet"), chat_cfg(messages_field="conv"))
    datasets.Dataset.from_dict({"messages": rows}).save_to_disk(str(tmp_path / "ds"))
    from_hf = load_documents(f"hf:{tmp_path / 'ds'}", chat_cfg())
    expected = [tuple(Message(m["role"], m["content"]) for m in r) for r in rows]
    for docs in (from_jsonl, from_parquet, from_hf):
        assert [d.messages for d in docs] == expected


def test_chat_format_refuses_text_files_and_a_missing_field(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\n")
    with pytest.raises(ConfigError, match="JSONL, Parquet or hf"):
        load_documents(str(tmp_path / "a.txt"), chat_cfg())
    path = write_chat_jsonl(tmp_path / "c.jsonl", conversations(2))
    with pytest.raises(ConfigError, match="data.messages_field"):
        load_documents(str(path), chat_cfg(messages_field="conversation"))


def test_a_field_no_row_has_is_one_line_naming_the_field_and_the_keys_present(tmp_path):
    """Every row without ``data.messages_field``: a wrong field name, one error (not N skipped rows)."""
    path = tmp_path / "c.jsonl"
    path.write_text(
        "".join(json.dumps({"conversations": r, "id": i}) + "\n" for i, r in enumerate(conversations(3)))
    )
    with pytest.raises(ConfigError) as e:
        load_documents(str(path), chat_cfg())
    message = str(e.value)
    assert "\n" not in message
    assert (
        "no row has the field 'messages' (data.messages_field; the rows have: conversations, id)" in message
    )
    assert "set data.messages_field" in message
    docs = load_documents(str(path), chat_cfg(messages_field="conversations"))
    assert len(docs) == 3


def test_a_field_none_of_the_first_rows_has_is_refused_without_reading_the_rest(tmp_path):
    """A large file with the wrong field name is refused after FIELD_PROBE_ROWS rows, not at its end: the
    line after them is not JSON, and the error is still the field's."""
    from ekd.data.documents import FIELD_PROBE_ROWS

    path = tmp_path / "big.jsonl"
    rows = [json.dumps({"conversations": r, "id": i}) for i, r in enumerate(conversations(FIELD_PROBE_ROWS))]
    path.write_text("\n".join([*rows, "{not json", *rows]) + "\n")
    with pytest.raises(ConfigError) as e:
        load_documents(str(path), chat_cfg())
    message = str(e.value)
    assert f"none of the first {FIELD_PROBE_ROWS} rows has the field 'messages'" in message, message
    assert "the rows have: conversations, id" in message and "set data.messages_field" in message


def test_a_misspelt_messages_field_suggests_the_close_one(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        "".join(json.dumps({"messages": c, "id": i}) + "\n" for i, c in enumerate(conversations(3)))
    )
    with pytest.raises(ConfigError, match=r"the rows have: messages, id\); did you mean 'messages'\?"):
        load_documents(str(path), chat_cfg(messages_field="mesages"))


def test_a_file_whose_first_rows_lack_the_field_but_a_later_one_has_it_is_read(tmp_path, caplog):
    """One row with the field among the first FIELD_PROBE_ROWS is enough: the rest are skipped and counted."""
    from ekd.data.documents import FIELD_PROBE_ROWS

    good = conversations(2)
    lines = [{"text": "no messages", "id": i} for i in range(FIELD_PROBE_ROWS - 1)]
    lines += [{"messages": good[0]}, *({"text": "x"} for _ in range(300)), {"messages": good[1]}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    with caplog.at_level(logging.WARNING):
        docs = load_documents(str(path), chat_cfg())
    assert [d.doc_id for d in docs] == [f"mixed.jsonl:{FIELD_PROBE_ROWS}", f"mixed.jsonl:{len(lines)}"]
    skipped = len(lines) - 2
    assert any(
        f"skipped {skipped} of {len(lines)} ({skipped} no data.messages_field)" in r.getMessage()
        for r in caplog.records
    )


def test_rows_without_the_messages_field_are_skipped_and_counted_with_the_malformed(tmp_path, caplog):
    good = conversations(3)
    lines = [
        {"messages": good[0]},
        {"text": "a stray text row", "id": 1},  # line 2: no messages field
        {"messages": "not a list"},  # line 3: malformed
        {"messages": good[1]},
        {"messages": None},  # line 5: null, malformed
        {"messages": good[2]},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    with caplog.at_level(logging.WARNING):
        docs = load_documents(str(path), chat_cfg())
    assert [d.doc_id for d in docs] == ["c.jsonl:1", "c.jsonl:4", "c.jsonl:6"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "skipped 3 of 6 (2 malformed messages, 1 no data.messages_field)" in warnings[0]
    assert (
        "first of each: c.jsonl:3 (" in warnings[0]
    )  # the more frequent reason's first row, then the other's
    assert "; c.jsonl:2 (no field 'messages' (row keys: text, id))" in warnings[0], warnings[0]


def test_rejected_rows_are_skipped_counted_and_reported_in_one_line(tmp_path, chat_tok, caplog):
    good = conversations(3)
    rows = [
        good[0],
        [{"role": "user", "content": "hello"}],  # line 2: no assistant turn
        good[1],
        [
            {"role": "tool", "content": "x"},
            {"role": "assistant", "content": "fine"},
        ],  # line 4: template raises
        [{"role": "user", "content": 5}],  # line 5: malformed (content not text)
        good[2],
    ]
    chat_tok.chat_template = STRICT
    with caplog.at_level(logging.WARNING):
        docs = load_documents(str(write_chat_jsonl(tmp_path / "c.jsonl", rows)), chat_cfg())
        blocks = pack_documents(docs, chat_tok, 8)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2, lines
    load_line = next(line for line in lines if "malformed" in line)
    assert "skipped 1 of 6" in load_line and "first: c.jsonl:5" in load_line
    render_line = next(line for line in lines if "chat template" in line)
    assert (  # the first row of each reason is named, not only the first row's (try-out 74, F1)
        "skipped 2 of 5" in render_line
        and "first of each: c.jsonl:2 (no assistant turn (roles: user)); c.jsonl:4 (the chat template raised: "
        "unknown role tool)"
        in render_line
    ), render_line
    assert "1 rejected by the chat template" in render_line and "1 no assistant turn" in render_line
    kept = [tok for r in (good[0], good[1], good[2]) for tok in reference(chat_tok, r)[0]]
    assert blocks.input_ids.flatten().tolist() == kept[: len(blocks) * 8]


def test_every_row_rejected_is_one_line(tmp_path, chat_tok):
    chat_tok.chat_template = PLAIN
    docs = load_documents(
        str(write_chat_jsonl(tmp_path / "c.jsonl", [[{"role": "user", "content": "hi"}]] * 3)), chat_cfg()
    )
    with pytest.raises(ConfigError, match="skipped 3 of 3 .*no chat row is left") as e:
        pack_documents(docs, chat_tok, 8)
    assert "\n" not in str(e.value)


def test_a_tokenizer_without_a_chat_template_gets_one_line_or_the_declared_one(tmp_path, chat_tok, caplog):
    chat_tok.chat_template = None
    docs = load_documents(str(write_chat_jsonl(tmp_path / "c.jsonl", conversations(4))), chat_cfg())
    with pytest.raises(ConfigError, match="has no chat template; set data.chat_template") as e:
        pack_documents(docs, chat_tok, 8)
    assert "\n" not in str(e.value)
    cfg = Config()
    cfg.data = chat_cfg(chat_template=PLAIN)
    with caplog.at_level(logging.INFO, logger="ekd"):
        settle_chat_template(cfg, chat_tok, docs, {})
    assert chat_tok.chat_template == PLAIN and "not the tokenizer's own template" not in caplog.text
    (tmp_path / "t.jinja").write_text(MARKED)
    cfg.data = chat_cfg(chat_template=str(tmp_path / "t.jinja"))
    with caplog.at_level(
        logging.INFO, logger="ekd"
    ):  # try-out 18: the tokenizer's own one (PLAIN) is replaced
        settle_chat_template(cfg, chat_tok, docs, {})
    assert (
        chat_tok.chat_template == MARKED
        and "carries data.chat_template, not the tokenizer's own" in caplog.text
    )
    cfg.data = chat_cfg(chat_template=str(tmp_path / "missing.jinja"))
    with pytest.raises(ConfigError, match="names no file .* is not a Jinja template"):
        settle_chat_template(cfg, chat_tok, docs, {})


def test_teacher_and_student_templates_must_agree_or_one_is_named(tmp_path, chat_tok):
    import copy

    docs = load_documents(str(write_chat_jsonl(tmp_path / "c.jsonl", conversations(4))), chat_cfg())
    teacher, student = copy.deepcopy(chat_tok), copy.deepcopy(chat_tok)
    teacher.chat_template = MARKED
    student.chat_template = MARKED.replace("<|end|>{% endgeneration %}", "{% endgeneration %}<|end|>")
    cfg = Config()
    cfg.data = chat_cfg()
    chat_tok.chat_template = MARKED  # the run tokenizer is the teacher's
    settle_chat_template(
        cfg, chat_tok, docs, {"teacher": teacher, "student": copy.deepcopy(teacher)}
    )  # agree
    with pytest.raises(
        ConfigError, match="student's chat template renders row c.jsonl:1 to the same tokens"
    ) as e:
        settle_chat_template(cfg, chat_tok, docs, {"teacher": teacher, "student": student})
    assert "data.chat_template_from" in str(e.value) and "\n" not in str(e.value)
    other = copy.deepcopy(chat_tok)  # another text: the rendering differs
    other.chat_template = MARKED.replace("<|end|>{% endgeneration %}", "<|end|><|end|>{% endgeneration %}")
    with pytest.raises(ConfigError, match="student's chat template renders row c.jsonl:1 unlike the run"):
        settle_chat_template(cfg, chat_tok, docs, {"teacher": teacher, "student": other})
    cfg.data = chat_cfg(chat_template_from="student")
    settle_chat_template(cfg, chat_tok, docs, {"teacher": teacher, "student": student})
    assert chat_tok.chat_template == student.chat_template
    with pytest.raises(ConfigError, match="preset"):
        settle_chat_template(cfg, chat_tok, docs, {"teacher": teacher})


def test_eval_sources_of_a_chat_run_read_rows_as_chat_and_text_as_text(tmp_path):
    train = write_chat_jsonl(tmp_path / "train.jsonl", conversations(6))
    held = write_chat_jsonl(tmp_path / "held.jsonl", conversations(2, seed=9))
    (tmp_path / "notes.txt").write_text("some plain text\n")
    cfg = Config()
    cfg.data = chat_cfg(
        source=str(train),
        eval_fraction=0.0,
        eval_sources={"held": str(held), "text": str(tmp_path / "notes.txt")},
    )
    splits = load_splits(cfg)
    assert all(d.messages for d in splits["train"] + splits["held"])
    assert splits["text"][0].messages is None and splits["text"][0].text.startswith("some plain")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.chat_template={{ x }}"], "data.chat_template applies to data.format=chat only"),
        (["data.chat_template_from=teacher"], "data.chat_template_from applies to data.format=chat only"),
        (
            ["data.format=chat", "data.source=x.jsonl", "data.prompt_field=p", "data.response_field=r"],
            "do not apply",
        ),
        (["data.format=chat"], "not pystdlib"),
    ],
)
def test_chat_keys_without_chat_format_and_chat_without_rows_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(overrides=overrides)
    assert "\n" not in str(e.value)


messages_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.sampled_from(ROLES + ("tool",))
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.fixed_dictionaries({"role": inner, "content": inner}),
        st.dictionaries(st.sampled_from(["role", "content", "x"]), inner, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(messages_values, min_size=1, max_size=5))
# found by this test in session 29: a role with a line break broke the refusal's one line
@example([[{"role": "\n", "content": "0"}]])
@example([[{"role": "\n", "content": None}]])
def test_random_messages_render_or_are_skipped_never_a_crash(tmp_path_factory, chat_tok, values):
    path = tmp_path_factory.mktemp("fuzz") / "c.jsonl"
    path.write_text("".join(json.dumps({"messages": v}) + "\n" for v in values))
    chat_tok.chat_template = STRICT
    try:
        docs = load_documents(str(path), chat_cfg(min_chars=0))
        blocks = pack_documents(docs, chat_tok, 4)
    except EkdError as e:
        assert "\n" not in str(e), str(e)
    else:
        assert blocks.num_targets >= 0


# ---------------------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------------------


def test_distill_with_a_template_less_tokenizer_is_one_line(tmp_path, chat_tok, capsys):
    chat_tok.chat_template = None
    chat_tok.save_pretrained(str(tmp_path / "tok"))
    data = write_chat_jsonl(tmp_path / "chat.jsonl", conversations(8))
    overrides = tiny_overrides(
        tmp_path, data, "nochat", **{"data.format": "chat", "model.tokenizer": tmp_path / "tok"}
    )
    assert main(["distill", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ekd: error: "), err
    assert "has no chat template; set data.chat_template" in err[0]


@pytest.mark.parametrize("store_dir", ["", "auto"], ids=["memory", "store"])
def test_a_missing_template_file_is_one_line_before_the_tokenizer_is_trained(
    tmp_path, capsys, monkeypatch, store_dir
):
    import ekd.data

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained before the template file was checked")

    monkeypatch.setattr(ekd.data, "train_bpe_tokenizer", no_training)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", conversations(8))
    missing = tmp_path / "templates" / "chat.jinja"
    overrides = tiny_overrides(
        tmp_path,
        data,
        "missing",
        **{"data.format": "chat", "data.chat_template": missing, "data.store_dir": store_dir},
    )
    assert main(["distill", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ekd: error: "), err
    assert f"data.chat_template={missing} names no file ({missing})" in err[0]
    assert "fix the path" in err[0]


def test_the_template_file_is_not_checked_by_config_validation():
    """A saved run's config.yaml still loads (``ekd eval``) after its template file has moved."""
    cfg = load_config(
        overrides=["data.format=chat", "data.source=x.jsonl", "data.chat_template=/gone/chat.jinja"]
    )
    assert cfg.data.chat_template == "/gone/chat.jinja"


@pytest.mark.slow
def test_distill_on_chat_data_puts_kd_and_ce_on_assistant_tokens_only(tmp_path, chat_tok):
    rows = conversations(16, seed=5)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", rows)
    chat_tok.chat_template = None  # the template comes from data.chat_template (the declared fallback)
    tok_dir = tmp_path / "tok"
    chat_tok.save_pretrained(str(tok_dir))
    T = 32
    stream, flags = [], []
    for r in rows:
        ids, f = reference(chat_tok, r)
        stream += ids
        flags += f
    N = len(stream) // T
    assistant_targets = sum(flags[r * T + t] for r in range(N) for t in range(1, T))  # column 0 has no label
    held_rows = conversations(3, seed=11)
    held = write_chat_jsonl(tmp_path / "held.jsonl", held_rows)
    held_flags = [f for r in held_rows for f in reference(chat_tok, r)[1]]
    held_blocks = min(len(held_flags) // T, 4)  # data.max_eval_blocks=4
    assert held_blocks >= 1
    held_targets = sum(held_flags[r * T + t] for r in range(held_blocks) for t in range(1, T))
    template_file = tmp_path / "chat.jinja"
    template_file.write_text(PLAIN)
    overrides = tiny_overrides(
        tmp_path,
        data,
        "chat",
        **{
            "data.format": "chat",
            "data.chat_template": template_file,
            "data.block_length": T,
            "data.eval_fraction": 0.0,
            "data.eval_sources": f"{{held: {held}}}",
            "model.tokenizer": str(tok_dir),
            "train.micro_batch_size": N,  # every step sees every block: its counts are the whole set's
            "train.max_steps": 2,
            "method.ce_weight": 0.5,
        },
    )
    assert main(["distill", *overrides]) == 0
    run_dir = tmp_path / "runs" / "chat"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "train/loss" in m]
    assert len(steps) == 2
    for m in steps:
        assert m["train/kd_tokens"] == assistant_targets
        assert m["train/ce_tokens"] == assistant_targets
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(run_dir / "student")
    assert saved.chat_template == PLAIN  # the template travels with the student
    template_file.unlink()  # ekd eval reads the saved template, not data.chat_template's file
    assert (
        main(["eval", str(run_dir)]) == 0
    )  # ekd eval renders the held-out chat rows with the saved template
    assert json.loads((run_dir / "eval.json").read_text())["held"]["tokens"] == held_targets
    # try-out 135, F3: the export stops generating at the end of turn its assistant turns were taught to end with
    from ekd.data.chat import ChatRenderer

    saved.chat_template = PLAIN
    (turn_end,) = ChatRenderer(saved).end_of_turn_ids()
    stops = json.loads((run_dir / "student" / "generation_config.json").read_text())["eos_token_id"]
    assert isinstance(stops, list) and turn_end in stops and stops[0] == saved.eos_token_id, (stops, turn_end)


# Renders an assistant turn's tool calls (as Qwen2.5's and Llama-3.1's templates do) and a tool result turn.
TOOLS = (
    "{% for m in messages %}<|{{ 'user' if m['role'] == 'tool' else m['role'] }}|>"
    "{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% for c in m['tool_calls'] or [] %}call {{ c['function']['name'] }} with {{ c['function']['arguments'] }}"
    "{% endfor %}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_tool_calls_are_rendered_and_trained_as_the_template_writes_them(chat_tok, tmp_path):
    """Try-out 18: ekd kept only role and content, so an assistant turn that calls a tool (content null or "",
    `tool_calls`) was rendered and trained as an empty answer, without a word. A message's other keys now reach
    the template as `apply_chat_template` passes them — in their order, with any value (try-out 19: sorted keys
    reordered tool arguments; a timestamp field refused every row)."""
    import datetime

    call = {"type": "function", "function": {"name": "sorted", "arguments": {"unit": "C", "city": "Rome"}}}
    row = [
        {"role": "user", "content": "what is the value"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "items", "tool_call_id": "0", "name": "sorted"},
        {"role": "assistant", "content": "the value is a list", "created": datetime.datetime(2026, 1, 2)},
    ]
    messages = parse_messages(row)
    assert messages[1] == Message("assistant", None, (("tool_calls", [call]),))
    assert messages[1].as_dict() == row[1] and list(messages[2].as_dict()) == list(row[2])  # keys in order
    rendered = ChatRenderer(chat_tok, TOOLS)(messages)
    expected = chat_tok.apply_chat_template(row, chat_template=TOOLS, tokenize=False)
    assert chat_tok.decode(rendered.input_ids) == expected
    assert "call sorted with {'unit': 'C', 'city': 'Rome'}" in expected  # the row's order, not sorted
    trained = chat_tok.decode([i for i, m in zip(rendered.input_ids, rendered.assistant_mask) if m])
    call_text = "call sorted with {'unit': 'C', 'city': 'Rome'}"
    assert trained == f"{call_text}<|end|>the value is a list<|end|>"  # the call, then the answer
    with pytest.raises(RejectedRow, match=r"message 0 \(assistant\) has no content, not a string"):
        parse_messages([{"role": "assistant", "content": None}])  # null content without a tool call
    # try-out 24: a tool result given as an object (Llama-3.1's template writes it with tojson) is a message
    result = {"role": "tool", "content": {"temp": 3, "unit": None}}
    assert parse_messages([result])[0].content == {"temp": 3, "unit": None}  # JSON's own null kept
    assert parse_messages([result], columnar=True)[0].content == {"temp": 3}  # a struct column's union
    with pytest.raises(RejectedRow, match=r"message 0 \(tool\) has content of type list, not a string"):
        parse_messages([{"role": "tool", "content": [1]}])
    with pytest.raises(RejectedRow, match="message 0 has no string role"):
        parse_messages([{"role": 3, "content": "x"}])
    with pytest.raises(RejectedRow, match="messages is an empty list"):  # try-out 21: was a min_chars drop
        parse_messages([])


# Writes the row's tool definitions into a system turn, as Qwen2.5's and Llama-3.1's templates do.
TOOLS_HEADER = (
    "{% if tools %}<|system|>{% for t in tools %}{{ t['function']['name'] }} {% endfor %}<|end|>{% endif %}"
)
WITH_TOOLS = TOOLS_HEADER + TOOLS
WEATHER = {"type": "function", "function": {"name": "sorted", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "template", [WITH_TOOLS, TOOLS_HEADER + MARKED], ids=["prefix_diff", "generation_markers"]
)
def test_a_rows_tool_definitions_reach_the_template_and_get_no_loss(chat_tok, template):
    """A row's tool definitions (`data.tools_field`) were dropped: the template rendered no tools, so the student
    learned to call tools it was never shown. They now go to the template as `apply_chat_template(tools=)`
    passes them; their text is not an assistant turn."""
    row = [{"role": "user", "content": "what is the value"}, {"role": "assistant", "content": "a list"}]
    rendered = ChatRenderer(chat_tok, template)(parse_messages(row), "r", [WEATHER])
    expected = chat_tok.apply_chat_template(row, tools=[WEATHER], chat_template=template, tokenize=False)
    assert expected.startswith("<|system|>sorted <|end|>")
    assert chat_tok.decode(rendered.input_ids) == expected
    trained = chat_tok.decode([i for i, m in zip(rendered.input_ids, rendered.assistant_mask) if m])
    assert trained == "a list<|end|>"
    bare = ChatRenderer(chat_tok, template)(parse_messages(row))  # no tools: no system turn
    assert chat_tok.decode(bare.input_ids) == expected.removeprefix("<|system|>sorted <|end|>")


def test_tool_definitions_are_read_from_jsonl_parquet_and_hf_rows(tmp_path):
    """A list of objects, or a JSON string of one (xLAM-style datasets); null, [] and "" are no tools; anything
    else is a malformed row, skipped and counted like malformed messages."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ekd.data.chat import parse_tools

    conv = conversations(1)[0]
    rows = [{"messages": conv, "tools": [WEATHER]}, {"messages": conv, "tools": json.dumps([WEATHER])}]
    rows += [{"messages": conv}, {"messages": conv, "tools": None}, {"messages": conv, "tools": ""}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [d.tools for d in load_documents(str(path), chat_cfg())] == [(WEATHER,)] * 2 + [None] * 3
    columnar = [[WEATHER], [], None]  # Parquet/HF: a struct column; the row without tools is null or []
    pq.write_table(pa.table({"messages": [conv] * 3, "fns": columnar}), tmp_path / "t.parquet")
    from_parquet = load_documents(str(tmp_path / "t.parquet"), chat_cfg(tools_field="fns"))
    datasets.Dataset.from_dict({"messages": [conv] * 3, "tools": columnar}).save_to_disk(str(tmp_path / "ds"))
    from_hf = load_documents(f"hf:{tmp_path / 'ds'}", chat_cfg())
    for docs in (from_parquet, from_hf):
        assert [d.tools for d in docs] == [(WEATHER,), None, None]
    assert parse_tools([{"function": {"name": "f", "description": None}}], columnar=True) == (
        {"function": {"name": "f"}},
    )  # a struct column's nulls (keys other rows have) are dropped, as in messages
    as_string = json.dumps([{"function": {"name": "f", "parameters": {"x": {"default": None}, "a": 1}}}])
    assert parse_tools(as_string, columnar=True) == tuple(
        json.loads(as_string)
    )  # try-out 24: kept as written
    bad_values = [
        (3, "tools is int"),
        ("[1]", "a list with non-objects"),
        ('"f"', "tools is str"),
        ("{x", "not JSON"),
    ]
    for bad, reason in bad_values:
        with pytest.raises(RejectedRow, match=reason) as e:
            parse_tools(bad)
        assert e.value.kind == "malformed tools"  # not "malformed messages" (try-out 24)


def test_a_tools_field_set_by_name_that_no_row_has_is_said(tmp_path, caplog):
    """Try-out 24: a mistyped data.tools_field dropped every row's definitions without a word (a missing
    messages field is an error). The default, 'tools', absent from rows without tools, is not said."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = conversations(1)[0]
    write_chat_jsonl(tmp_path / "c.jsonl", [conv])
    pq.write_table(pa.table({"messages": [conv]}), tmp_path / "c.parquet")
    for source in ("c.jsonl", "c.parquet"):
        with caplog.at_level(logging.WARNING, logger="ekd"):
            caplog.clear()
            load_documents(str(tmp_path / source), chat_cfg())
            assert not caplog.records
            load_documents(str(tmp_path / source), chat_cfg(tools_field="functions"))
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "'functions' (data.tools_field; the " in said[0], said
        assert ("no row has the field" if source.endswith("jsonl") else "no column is named") in said[0], said
        assert "fields: messages" in said[0], said  # the fields there (try-out 76, F8)


# Mentions `tools` without writing them, as Mistral v0.3's template does (try-out 24: a text search missed it).
MENTIONS_TOOLS = "{%- if not tools is defined %}{%- set tools = none %}{%- endif %}" + MARKED


@pytest.mark.parametrize("template", [MARKED, MENTIONS_TOOLS], ids=["never-reads", "mentions"])
def test_tools_and_tool_calls_a_template_drops_are_said_once(chat_tok, caplog, template):
    """Found by rendering a probe with a named tool: a template that drops a row's tool definitions, or writes an
    assistant turn's tool calls as nothing (try-out 24: a Llama-3.0 template trained them as empty answers), is
    said once each; a template that writes them is not."""
    row = parse_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    call = {"type": "function", "function": {"name": "sorted", "arguments": {"x": 1}}}
    calling = parse_messages(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    )
    import ekd.data.chat as chat_module

    chat_module._SAID.clear()  # said once per process: this test's own count
    with caplog.at_level(logging.WARNING, logger="ekd"):
        for _ in range(2):  # a renderer per data source (train, eval sets): said once in all (try-out 25)
            renderer = ChatRenderer(chat_tok, template)
            for _ in range(3):
                renderer(row, "t.jsonl:1", [WEATHER])
                renderer(calling, "t.jsonl:2")
        ChatRenderer(chat_tok, WITH_TOOLS)(row, "t.jsonl:1", [WEATHER])  # writes both: nothing said
        ChatRenderer(chat_tok, WITH_TOOLS)(calling, "t.jsonl:2")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert (
        "row t.jsonl:1 has tool definitions (data.tools_field), which the chat template does not write"
        in said[0]
    )
    assert "row t.jsonl:2 has assistant tool calls (tool_calls)" in said[1]
    assert "a turn that only calls a tool is trained as an empty answer" in said[1]


def test_message_metadata_never_moves_a_conversation_between_train_and_eval():
    """Try-out 19: with every key in the held-out split's key, rows with `name`, `weight` or ids changed sides
    against earlier ekd runs. The split key is roles and contents, as it always was; the cache import matches
    rows by roles, contents and tool calls (try-out 20: by every key, a source without the training rows'
    `name` or ids matched nothing), nulls dropped, so a Parquet source matches JSONL training rows."""
    from ekd.data.build import content_key
    from ekd.data.chat import import_key

    plain = conversations(1)[0]
    named = [{**m, "name": "ann", "weight": 0} for m in plain]
    old = json.dumps([[m["role"], m["content"]] for m in plain], ensure_ascii=False)
    for rows in (plain, named):
        assert (
            content_key(Document(text="", messages=parse_messages(rows)))
            == hashlib.sha256(old.encode()).hexdigest()
        )
    assert import_key(parse_messages(named)) == import_key(parse_messages(plain))
    # a Parquet struct column gives every message, and every nested object, the union of keys (null elsewhere)
    call = {"function": {"name": "f", "arguments": {"city": "Rome"}}}
    columnar_call = {"function": {"name": "f", "arguments": {"city": "Rome", "unit": None}}}
    json_row = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    parquet_row = [
        {"role": "user", "content": "q", "tool_calls": None},
        {"role": "assistant", "content": None, "tool_calls": [columnar_call]},
    ]
    assert parse_messages(parquet_row, columnar=True) == parse_messages(json_row)
    assert parse_messages(parquet_row)[1].extra == (("tool_calls", [columnar_call]),)  # JSON's own nulls stay
    assert import_key(parse_messages(parquet_row)) == import_key(parse_messages(json_row))
    other_call = [json_row[0], {**json_row[1], "tool_calls": [{"function": {"name": "g", "arguments": {}}}]}]
    assert import_key(parse_messages(other_call)) != import_key(parse_messages(json_row))


def test_rows_none_of_which_is_messages_name_the_format_not_min_chars(tmp_path):
    """Try-out 18: ShareGPT rows ({from, value} under `conversations`) with data.messages_field=conversations were
    all skipped as malformed, then refused as 'no documents left after filtering (min_chars=1); lower
    data.min_chars'. The error names the rows' format and what chat rows need."""
    rows = [[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]] * 3
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("".join(json.dumps({"conversations": r}) + "\n" for r in rows))
    with pytest.raises(ConfigError) as e:
        load_documents(str(path), chat_cfg(messages_field="conversations"))
    line = str(e.value)
    assert "\n" not in line and "none of its 3 chat rows could be read (3 malformed messages" in line
    assert "('conversations') to hold a list of {role, content} objects" in line and "min_chars" not in line


def test_the_templates_end_of_turn_token_is_found_by_a_probe(chat_tok, caplog):
    """Try-out 19: a base student (its config names only its EOS) taught on an instruct template kept generating
    past the template's end-of-turn token in on-policy runs. The renderer names that token for the stops."""
    end = chat_tok.convert_tokens_to_ids("<|end|>")
    assert ChatRenderer(chat_tok, PLAIN).end_of_turn_ids() == [end]
    assert ChatRenderer(chat_tok, MARKED).end_of_turn_ids() == [end]
    bare = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"  # no special token after
    )
    assert ChatRenderer(chat_tok, bare).end_of_turn_ids() == []
    with caplog.at_level(logging.INFO, logger="ekd"):
        assert (
            ChatRenderer(chat_tok, STRICT.replace("'assistant'", "'helper'")).end_of_turn_ids() == []
        )  # rejects
    # review 126, S4: said, not left for generated turns to run on to the EOS without a word
    assert "the chat template rejects a plain user/assistant exchange (" in caplog.text
    assert "generated turns end at the EOS only" in caplog.text


def test_on_policy_chat_runs_stop_turns_at_the_templates_end_of_turn(tmp_path, chat_tok, monkeypatch):
    """The trainer hands the template's end-of-turn token to on-policy generation (a preset student names only
    its EOS in its config)."""
    from ekd.train import onpolicy

    seen: list = []
    real = onpolicy._generate

    def spy(student, prompts, attention_mask, **kw):
        seen.append(kw["stops"])
        return real(student, prompts, attention_mask, **kw)

    monkeypatch.setattr(onpolicy, "_generate", spy)
    chat_tok.chat_template = None
    tok_dir = tmp_path / "tok"
    chat_tok.save_pretrained(str(tok_dir))
    template = tmp_path / "chat.jinja"
    template.write_text(PLAIN)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", conversations(12, seed=5))
    extra = {
        "data.format": "chat",
        "data.chat_template": template,
        "data.block_length": 32,
        "data.eval_fraction": 0.0,
        "model.tokenizer": str(tok_dir),
        "train.max_steps": 1,
    }
    args = [*tiny_overrides(tmp_path, data, "gkd", **extra), "method=gkd", "method.student_data_fraction=1"]
    assert main(["-q", "distill", *args, "method.max_new_tokens=4"]) == 0
    end = chat_tok.convert_tokens_to_ids("<|end|>")
    assert seen and all(end in stops for stops in seen)


def test_a_template_that_writes_todays_date_is_said(chat_tok, caplog):
    """Try-out 24: Llama-3.1's template writes "Today Date: <today>" (strftime_now), so its renderings — the
    token store, a cache's fingerprint, the eval sets — change from one day to the next."""
    dated = "{% set date_string = strftime_now('%d %b %Y') %}" + MARKED
    with caplog.at_level(logging.WARNING, logger="ekd"):
        ChatRenderer(chat_tok, MARKED)
        ChatRenderer(chat_tok, dated, "data.chat_template")
        ChatRenderer(chat_tok, dated, "data.chat_template")  # the run's next renderer: said once
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "(data.chat_template) writes today's date (strftime_now)" in said[0], said


def test_an_object_content_the_template_writes_as_python_text_is_said_once(chat_tok, caplog):
    """Try-out 25: a tool result given as a JSON object is written by Qwen2.5's template (`{{ content }}`) as
    Python text, `{'temp': 10}`, as `apply_chat_template` writes it; said once, found by a probe. A template that
    writes it with `tojson` (Llama-3.1's) is not said."""
    import ekd.data.chat as chat_module

    call = {"type": "function", "function": {"name": "sorted", "arguments": {"x": 1}}}
    row = parse_messages(
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": {"temp": 10}},
            {"role": "assistant", "content": "ten"},
        ]
    )
    as_json = TOOLS.replace("{{ m['content'] }}", "{{ m['content'] | tojson }}")
    chat_module._SAID.clear()  # said once per process: this test's own count
    with caplog.at_level(logging.WARNING, logger="ekd"):
        for _ in range(2):  # a renderer per data source
            rendered = ChatRenderer(chat_tok, TOOLS)(row, "t.jsonl:3")
        assert "{'temp': 10}" in chat_tok.decode(rendered.input_ids)  # as apply_chat_template writes it
        assert '{"temp": 10}' in chat_tok.decode(ChatRenderer(chat_tok, as_json)(row, "t.jsonl:3").input_ids)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert said[0].startswith(
        "data.format=chat: row t.jsonl:3 gives a tool message's content as a JSON object"
    )
    assert "writes as Python text" in said[0] and "give such contents as JSON strings" in said[0]
