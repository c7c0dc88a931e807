"""Loading a model the user named fails in one ModelError line whatever is wrong with it, and never runs
code it was not allowed to (issue 11 item 5): random or truncated safetensors, an unknown model_type,
config/weights shape mismatch, a hostile pickle, remote code with trust_remote_code off, a directory that
is not a model or is empty (the "no config.json" check comes before any tokenizer or weights load)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ekd.cli import main
from ekd.errors import ConfigError, ModelError
from ekd.models.load import load_model, load_tokenizer
from tiny import tiny_overrides, write_corpus


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    path = tmp_path_factory.mktemp("models") / "good"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


class _Evil:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _edit_config(d, **values):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(values)
    (d / "config.json").write_text(json.dumps(cfg))


def _random_weights(d):
    (d / "model.safetensors").write_bytes(os.urandom(4000))


def _truncated_weights(d):
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])


def _unknown_type(d):
    _edit_config(d, model_type="foobar_lm")


def _shape_mismatch(d):
    _edit_config(d, hidden_size=32, intermediate_size=64)


def _remote_code(d):
    _edit_config(
        d,
        model_type="custom_lm",
        auto_map={"AutoConfig": "conf.CustomConfig", "AutoModelForCausalLM": "modeling.CustomLM"},
    )
    (d / "conf.py").write_text(f"open({str(d / 'RAN')!r}, 'w').close()\n")
    (d / "modeling.py").write_text(f"open({str(d / 'RAN')!r}, 'w').close()\n")


def _cut_generation_config(d):
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=5).save_pretrained(d)  # an instruct model: its turn end ends sequences
    text = (d / "generation_config.json").read_text()
    (d / "generation_config.json").write_text(text[: len(text) // 2])


CASES = {
    "random_safetensors": (_random_weights, "not a valid safetensors file"),
    "truncated_safetensors": (_truncated_weights, "not a valid safetensors file"),
    "unknown_model_type": (_unknown_type, "foobar_lm"),
    "shape_mismatch": (_shape_mismatch, "weights do not match config.json: "),
    "remote_code": (_remote_code, "set model.trust_remote_code=true only if you trust that code"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_model_directory_is_one_model_error(case, good_dir, tmp_path):
    damage, message = CASES[case]
    d = tmp_path / case
    shutil.copytree(good_dir, d)
    damage(d)
    with pytest.raises(ModelError) as info:
        load_model(str(d), vocab_size=64, role="teacher")
    text = str(info.value)
    assert text.startswith(f"model.teacher: cannot load a model from '{d}'"), text
    assert message in text and "\n" not in text, text
    assert not (d / "RAN").exists()  # remote code never ran


def test_hostile_pickle_is_refused_and_never_runs(good_dir, tmp_path):
    d = tmp_path / "hostile"
    shutil.copytree(good_dir, d)
    (d / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Evil(marker)}, f)
    with pytest.raises(ModelError, match="refused by torch.load\\(weights_only=True\\)"):
        load_model(str(d), vocab_size=64, role="student")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["empty", "not_a_model", "missing"])
def test_directory_that_is_not_a_model_says_so_first(kind, tmp_path):
    d = tmp_path / kind
    if kind != "missing":
        d.mkdir()
    if kind == "not_a_model":
        (d / "notes.txt").write_text("hello")
    expected = {
        "empty": "is empty",
        "not_a_model": "not a Hugging Face model directory",
        "missing": "does not exist",
    }
    for load in (
        lambda: load_tokenizer(str(d), role="model.teacher"),
        lambda: load_model(str(d), vocab_size=64, role="teacher"),
    ):
        because = (
            "; pass" if kind == "missing" else " \\(no config.json\\)"
        )  # a path that is not: no file named
        with pytest.raises(ModelError, match=f"model.teacher: .*{expected[kind]}{because}"):
            load()


def test_cli_reports_a_non_model_teacher_in_one_line(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", n_docs=6)
    empty = tmp_path / "empty_model"
    empty.mkdir()
    overrides = tiny_overrides(
        tmp_path, corpus, "nm", **{"model.teacher": str(empty), "model.tokenizer": "teacher"}
    )
    assert main(["distill", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is empty (no config.json)" in err[0], err


def test_attn_implementation_applies_to_presets():
    model = load_model("preset:llama-micro", vocab_size=64, attn_implementation="eager", role="student")
    assert model.config._attn_implementation == "eager"
    model = load_model("preset:llama-micro", vocab_size=64, attn_implementation="sdpa", role="student")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    "argv",
    [
        ["student", "init", "nonexist-model", "OUT", "--layers", "2"],
        ["student", "init", "someorg/nonexist", "OUT", "--from-config", "num_hidden_layers=2"],
    ],
    ids=["layers", "from-config"],
)
def test_an_unknown_hub_id_without_network_is_one_line_not_minutes_of_retries(
    hub_unreachable, tmp_path, capsys, argv
):
    from hostile import one_error_line

    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    rc = main(argv)
    line = one_error_line(rc, capsys.readouterr().err)
    assert "not in the local cache" in line and "127.0.0.1 cannot be reached" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", [["--layers", "2"], ["--from-config", "num_hidden_layers=2"]])
def test_a_missing_path_says_it_does_not_exist(hub_unreachable, tmp_path, capsys, mode):
    from hostile import one_error_line

    rc = main(["student", "init", "./no-such-teacher", str(tmp_path / "out"), *mode])
    line = one_error_line(rc, capsys.readouterr().err)
    assert "./no-such-teacher does not exist" in line and "hub" not in line.split("does not exist")[0], line


@pytest.mark.parametrize(
    "spec, says",
    [
        ("", "is empty"),
        ("org/na me", "not a valid hub id"),
        ("a/b/c", "not a valid hub id"),
        ("hf:org/x", "not a valid hub id"),
        ("https://huggingface.co/gpt2", "not a valid hub id"),
    ],
)
def test_a_name_that_is_no_hub_id_is_refused_without_a_probe(monkeypatch, tmp_path, capsys, spec, says):
    """No TCP probe and no hub message for a spec that cannot be a hub id (try-out P4, P5)."""
    from ekd import hub
    from hostile import one_error_line

    def no_probe():
        raise AssertionError("probed the hub")

    monkeypatch.setattr(hub, "endpoint_unreachable", no_probe)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rc = main(["student", "init", spec, str(tmp_path / "out"), "--layers", "2"])
    line = one_error_line(rc, capsys.readouterr().err)
    assert says in line and "local cache" not in line, line


def test_a_dead_proxy_counts_as_no_network(hub_unreachable, monkeypatch, tmp_path, capsys):
    """A stale HTTPS_PROXY (nothing listens there) is probed like the endpoint: one line, not the library's
    minute of retries (try-out P2)."""
    from hostile import one_error_line

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    rc = main(["student", "init", "someorg/nonexist", str(tmp_path / "out"), "--layers", "2"])
    line = one_error_line(rc, capsys.readouterr().err)
    assert "the proxy 127.0.0.1:9 cannot be reached" in line, line


@pytest.mark.parametrize("proxy", ["refuses", "silent", "passes", "authenticates"])
def test_a_proxy_that_is_up_but_does_not_pass_the_hub_counts_as_no_network(
    proxy, hub_unreachable, monkeypatch
):
    """Try-out 152, F3: the probe connected to the proxy only, so one up but refusing the hub (403) or never
    answering counted as network: a cached model failed with a bare "403 Forbidden", or waited minutes. The proxy
    is asked as a client asks it; a refusal or silence within the probe's time is no network."""
    import socketserver
    import threading
    import time

    from huggingface_hub import constants

    import ekd.hub

    class Proxy(socketserver.BaseRequestHandler):
        def handle(self):
            asked = self.request.recv(1024)
            if proxy == "authenticates":  # passes a request carrying the URL's credentials (review 156, R6)
                ok = b"Proxy-Authorization: Basic dXNlcjpwQHNz" in asked  # user:p@ss
                self.request.sendall(b"HTTP/1.1 200 OK\r\n\r\n" if ok else b"HTTP/1.1 407 Auth\r\n\r\n")
            elif proxy == "refuses":
                self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            elif proxy == "passes":
                self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                time.sleep(ekd.hub.PROBE_TIMEOUT_S + 1)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    credentials = "user:p%40ss@" if proxy == "authenticates" else ""
    monkeypatch.setenv("HTTPS_PROXY", f"http://{credentials}127.0.0.1:{server.server_address[1]}")
    try:
        start = time.monotonic()
        why = ekd.hub.endpoint_unreachable()
        assert time.monotonic() - start < ekd.hub.PROBE_TIMEOUT_S + 1
    finally:
        server.shutdown()
        server.server_close()
    at = f"the proxy 127.0.0.1:{server.server_address[1]}"
    expected = {
        "refuses": f"{at} does not pass requests to huggingface.co (403 Forbidden)",
        "silent": f"{at} does not answer (",
        "passes": "",
        "authenticates": "",
    }[proxy]
    assert why.startswith(expected) and (why == "") is (proxy in ("passes", "authenticates")), why


def test_distill_checks_model_names_before_reading_data(hub_unreachable, monkeypatch, tmp_path, capsys):
    """A mistyped teacher name is reported before any data is loaded or tokenized (try-out P8)."""
    from ekd.train import trainer
    from hostile import one_error_line
    from tiny import tiny_overrides, write_corpus

    def no_data(*a, **k):
        raise AssertionError("data was read before the model names were checked")

    monkeypatch.setattr(trainer, "prepare_data_once", no_data)
    corpus = write_corpus(tmp_path / "corpus", n_docs=8)
    args = tiny_overrides(tmp_path, corpus, "t", **{"model.teacher": "someorg/nonexist"})
    line = one_error_line(main(["distill", *args]), capsys.readouterr().err)
    assert "model.teacher: 'someorg/nonexist'" in line and "not in the local cache" in line, line


@pytest.mark.slow
def test_a_cached_hub_model_loads_offline_without_a_single_retry(good_dir, tmp_path):
    """A model in the hub cache (as `hf download` or a copied HF_HOME leaves it, without the markers of files
    that do not exist) loads with the hub unreachable, and no request is retried — in a fresh process, where
    the libraries read HF_HUB_CACHE and HF_ENDPOINT from the environment as a user's run does."""
    import subprocess
    import sys

    snapshot = tmp_path / "hub" / "models--someorg--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(good_dir, snapshot)
    (tmp_path / "hub" / "models--someorg--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--tiny" / "refs" / "main").write_text("0" * 40)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "ALL_PROXY", "all_proxy"))}
    env |= {
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
    }
    out = tmp_path / "student"
    run = subprocess.run(
        [sys.executable, "-m", "ekd", "student", "init", "someorg/tiny", str(out), "--layers", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Retrying" not in run.stderr and "using the cached files" in run.stderr, run.stderr[-2000:]
    assert (out / "config.json").is_file()


def test_an_unreachable_hub_uses_cached_files_without_retrying(hub_unreachable, monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    import ekd.hub

    monkeypatch.setattr(ekd.hub, "_cached", lambda spec, filename, revision: True)
    assert ekd.hub.hub_kwargs("org/cached", "model.teacher") == {"local_files_only": True}
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE  # later requests stay local
    assert datasets.config.HF_HUB_OFFLINE  # an imported `datasets` too: it copied the switch at import
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(ekd.hub, "_cached", lambda spec, filename, revision: False)
    with pytest.raises(ModelError, match="model.teacher: 'org/missing' is not a local directory"):
        ekd.hub.hub_kwargs("org/missing", "model.teacher")
    monkeypatch.setattr(ekd.hub, "_WENT_OFFLINE", False)  # a fresh process
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's own offline mode: the cache decides too
    with pytest.raises(ModelError, match="while the hub is offline \\(HF_HUB_OFFLINE=1\\)"):
        ekd.hub.hub_kwargs("org/missing", "model.teacher")
    monkeypatch.setattr(ekd.hub, "_cached", lambda spec, filename, revision: True)
    assert ekd.hub.hub_kwargs("org/cached", "model.teacher") == {}


def test_a_hub_dataset_without_network_is_one_line(hub_unreachable):
    """No network: the process goes offline (a cached dataset would load from the cache, as README says); one
    that is not cached is one line naming the reason and the fixes."""
    import datasets.config

    from ekd.config import DataConfig
    from ekd.data.documents import _read_hf
    from ekd.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        next(_read_hf("someorg/corpus", DataConfig(), "data.source"))
    message = str(caught.value)
    assert message.startswith("data.source: cannot load dataset hf:someorg/corpus (127.0.0.1")
    assert "not in the datasets cache" in message and "save_to_disk" in message and "\n" not in message
    assert datasets.config.HF_DATASETS_OFFLINE  # switched offline: the cache is what was tried


def test_a_hub_dataset_under_the_users_offline_mode_names_the_cache(hub_unreachable, monkeypatch):
    """HF_HUB_OFFLINE=1 set by the user: no probe, the cache is tried, and a dataset not in it is the same one
    line (not "check the name/path")."""
    from ekd.config import DataConfig
    from ekd.data.documents import _read_hf
    from ekd.errors import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as caught:
        next(_read_hf("someorg/corpus", DataConfig(), "data.source"))
    message = str(caught.value)
    assert "offline mode is set" in message and "not in the datasets cache" in message, message


def test_a_missing_path_is_named_offline_too(monkeypatch, tmp_path):
    """With HF_HUB_OFFLINE set (by the user, or by ekd once the hub proved unreachable) a missing directory was
    passed on as a hub id, and the error came later, naming data.separator (found through test order)."""
    from ekd.hub import hub_kwargs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="model.student: .*no-such does not exist"):
        hub_kwargs(str(tmp_path / "no-such"), "model.student")
    # a hub id: the offline cache decides, now (try-out 152, F12: it was found missing only when loaded)
    with pytest.raises(ModelError, match="as a hub id it is not in the local cache while the hub is offline"):
        hub_kwargs("org/name", "model.student")


def test_a_model_directory_without_weights_is_named_before_data_or_tokenizers(
    good_dir, monkeypatch, tmp_path, capsys
):
    """try-out 29: a student directory holding config.json and a tokenizer but no weights was refused only when
    the model loaded — after a tokenizer warning that no longer mattered — with advice about the network and
    HF_HOME for a local directory. Now one line names the missing weights, before any data is read; ekd plan,
    which reads config.json only, still accepts such a directory."""
    from ekd.train import trainer
    from hostile import one_error_line
    from tiny import config_file, tiny_overrides, write_corpus

    bare = tmp_path / "bare"
    shutil.copytree(good_dir, bare)
    (bare / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="holds a config.json but no weights"):
        load_model(str(bare), vocab_size=64, role="student")

    def no_data(*a, **k):
        raise AssertionError("data was read before the model directories were checked")

    monkeypatch.setattr(trainer, "prepare_data_once", no_data)
    corpus = write_corpus(tmp_path / "corpus", n_docs=8)
    args = tiny_overrides(tmp_path, corpus, "t", **{"model.student": bare})
    line = one_error_line(main(["distill", *args]), capsys.readouterr().err)
    assert line == (
        f"ekd: error: model.student: {bare} holds a config.json but no weights (model.safetensors, "
        "pytorch_model.bin or a sharded index); save the model into it (model.save_pretrained) or name the "
        "directory that holds them"
    ), line
    planned = {"model.teacher": bare, "model.student": good_dir, "model.tokenizer": "teacher"}
    assert main(["plan", config_file(tmp_path, corpus, "p", **planned), "--gpus", "1"]) == 0, (
        capsys.readouterr()
    )


def test_a_checkpoint_without_some_of_the_models_tensors_is_refused_not_made_random(good_dir, tmp_path):
    """Try-out 35, F1: a teacher saved as its body alone (``LlamaModel``, no ``lm_head.weight``) loaded with a
    random head and taught with exit 0 (transformers only logs a table); an exported student alike."""
    from ekd.models.lora import load_exported_student

    model = AutoModelForCausalLM.from_pretrained(good_dir)
    body = tmp_path / "body"
    model.model.save_pretrained(body)
    with pytest.raises(ModelError) as info:
        load_model(str(body), vocab_size=64, role="teacher")
    text = str(info.value)
    assert text.startswith(
        f"model.teacher: {body} holds no weights for 1 of the LlamaForCausalLM's tensors"
    ), text
    assert "(lm_head.weight)" in text and "\n" not in text, text
    with pytest.raises(ModelError, match="holds no weights for 1 of"):
        load_exported_student(body)
    # tied embeddings are not missing: transformers ties the head to the input embedding
    tied = tmp_path / "tied"
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=True)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tied)
    assert load_model(str(tied), vocab_size=64, role="teacher").lm_head.weight.shape == (64, 16)


def test_a_model_with_non_finite_weights_is_one_line(good_dir, tmp_path):
    """Try-out 35, F2: one NaN weight made the head check take a max over no finite logit (a traceback)."""
    from ekd.models.load import check_output_head

    model = AutoModelForCausalLM.from_pretrained(good_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ModelError) as info:
        check_output_head(model, 64, "teacher")
    assert str(info.value).startswith("model.teacher: its logits on 8 probe tokens are not finite"), (
        info.value
    )
    assert "its weights hold NaN or inf (model.layers.0.mlp.down_proj.weight)" in str(info.value)


def test_a_float16_overflow_is_said_as_the_dtypes_range_not_a_corrupt_checkpoint(good_dir):
    """Try-out 75, F4: an intact teacher whose logits pass 65,504 under model.teacher_dtype=float16 was called 'a
    corrupt or diverged checkpoint; use another checkpoint'."""
    from ekd.models.load import check_finite_weights, check_output_head

    model = AutoModelForCausalLM.from_pretrained(good_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(60_000 / float(model.lm_head.weight.abs().max()))  # finite in float16 too
    check_output_head(model, 64, "teacher")  # float32: fine
    with pytest.raises(
        ModelError, match="its weights are finite: in float16, whose range ends at 65,504, an activation"
    ):
        check_output_head(model.half(), 64, "teacher")
    with torch.no_grad():
        model.float().lm_head.weight.mul_(1e3)  # past float16's range: the cast itself overflows
    with pytest.raises(ModelError, match=r"holds NaN or inf weights \(lm_head.weight\): in float16"):
        check_finite_weights(model.half(), "t", "teacher")


def test_a_nan_in_an_embedding_row_no_probe_feeds_is_refused_at_load(good_dir, tmp_path):
    """Try-out 38, F6: a NaN in one token's embedding row escaped the 8-token head probe — as teacher 'non-finite
    loss at step 1 … lower train.lr', as an exported student ppl null with exit 0. Every weight is read at load."""
    from ekd.models.lora import load_exported_student

    model = AutoModelForCausalLM.from_pretrained(good_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight[37, 3] = float("nan")  # not one of the probe's evenly spaced ids
    bad = tmp_path / "nan-row"
    model.save_pretrained(bad)
    with pytest.raises(
        ModelError, match=r"^model.teacher: .* holds NaN or inf weights \(model.embed_tokens.weight\)"
    ):
        load_model(str(bad), vocab_size=64, role="teacher")
    with pytest.raises(ModelError, match="holds NaN or inf weights"):
        load_exported_student(bad)


def test_an_encoder_is_refused_as_not_a_causal_lm():
    """Try-out 38, F13: a BERT encoder (loaded by ``AutoModelForCausalLM`` as ``BertLMHeadModel`` without
    ``is_decoder``) was refused as 'a post-head transform ekd does not know'. The head check's probe changes the
    last token and watches the positions before it; a causal Llama is untouched by that (bit for bit in fp32)."""
    from transformers import BertConfig

    from ekd.models.load import check_output_head

    bert = AutoModelForCausalLM.from_config(
        BertConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
        )
    )
    with pytest.raises(ModelError) as info:
        check_output_head(bert, 64, "student")
    text = str(info.value)
    assert text.startswith("model.student: model type 'bert' (BertLMHeadModel) is not a causal LM"), text
    assert "\n" not in text
    llama = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )
    check_output_head(llama, 64, "student")  # accepted


def test_an_unknown_model_type_next_to_a_tokenizer_is_one_line(good_dir, tmp_path, capsys):
    """Try-out 35, F5: loading the tokenizer of a directory whose config.json names an unknown ``model_type``
    printed transformers' config warning before ekd's refusal of the model."""
    from ekd.data import train_bpe_tokenizer

    d = tmp_path / "qwen9"
    tokenizer = train_bpe_tokenizer(["def f(x): return x + 1\n" * 20], 300, d)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(d)
    _edit_config(d, model_type="qwen9")
    corpus = write_corpus(tmp_path / "corpus", n_docs=6)
    overrides = tiny_overrides(
        tmp_path, corpus, "q9", **{"model.teacher": str(d), "model.tokenizer": "teacher"}
    )
    library = logging.getLogger("transformers")
    for propagating in (False, True):  # review 99: with propagation on, the root's handlers got it live
        seen, at_root = (
            _Collect(),
            _Collect(),
        )  # beside transformers' own stderr handler (pytest does not see it)
        library.addHandler(seen)
        logging.getLogger().addHandler(at_root)
        library.propagate = propagating
        capsys.readouterr()
        try:
            assert main(["distill", *overrides]) == 2
        finally:
            library.removeHandler(seen)
            logging.getLogger().removeHandler(at_root)
            library.propagate = False
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "qwen9" in err[0] and err[0].startswith("ekd: error: model.teacher: "), err
        assert seen.messages == [] and not [m for m in at_root.messages if "qwen9" in m], (seen, at_root)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_an_unknown_model_type_read_for_the_document_boundary_names_the_real_fix(good_dir, tmp_path):
    """Try-out 42, F5: a model directory of an unknown ``model_type`` without a generation config was refused by the
    document boundary's read of its config, advising ``data.separator=eos`` — which only led to the next refusal."""
    from ekd.data.boundary import read_model_eos

    d = tmp_path / "frob"
    shutil.copytree(good_dir, d)
    (d / "generation_config.json").unlink(missing_ok=True)
    _edit_config(d, model_type="frobnicator")
    with pytest.raises(ConfigError) as e:
        read_model_eos(str(d), key="model.student")
    assert "upgrade transformers or use a supported architecture" in str(e.value), e.value
    assert "data.separator=eos" not in str(e.value)


def test_a_run_directory_named_as_a_model_points_at_its_export(tmp_path):
    """Try-out 57, F5: `model.student=RUN` said 'not a Hugging Face model directory (no config.json)' without the
    'did you mean RUN/student' that `ekd eval RUN/student` gets."""
    run = tmp_path / "runs" / "kd"
    (run / "student").mkdir(parents=True)
    (run / "student" / "config.json").write_text('{"model_type": "llama"}')
    (run / "config.yaml").write_text("run: {name: kd}\n")
    with pytest.raises(ModelError, match=f"did you mean {run / 'student'}, the run's exported student\\?"):
        load_model(str(run), vocab_size=64, role="student")


def test_a_generation_config_that_does_not_parse_is_refused_not_read_as_absent(good_dir, tmp_path):
    """Review 126, R5: data.separator=auto read a cut generation_config.json as missing (transformers says OSError
    for both) and took config.json's end-of-sequence id: every document ended with id 2 instead of 5."""
    from ekd.config import ConfigError
    from ekd.data.boundary import read_model_eos

    d = tmp_path / "instruct"
    shutil.copytree(good_dir, d)
    _edit_config(d, eos_token_id=2)
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=5).save_pretrained(d)
    assert read_model_eos(str(d), key="model.teacher") == 5
    (d / "generation_config.json").unlink()  # absent: config.json's, as documented
    assert read_model_eos(str(d), key="model.teacher") == 2
    _cut_generation_config(d)
    with pytest.raises(ConfigError) as info:
        read_model_eos(str(d), key="model.teacher")
    text = str(info.value)
    assert text.startswith(f"model.teacher: '{d}': generation_config.json is not valid JSON ("), text
    assert text.endswith(
        "replace that file (save_pretrained writes it again), or delete it to use config.json's"
    )
    with pytest.raises(ModelError) as info:  # transformers loads the model with a default generation config
        load_model(str(d), vocab_size=64, role="teacher")
    assert str(info.value).startswith(f"model.teacher: '{d}': generation_config.json is not valid JSON (")
    # try-out 127, F8: valid JSON of another shape was a TypeError traceback inside transformers, an eos "x" a
    # ValueError in the boundary
    for text, said in [
        ("[1]", " is not a JSON object"),
        ('{"eos_token_id": "x"}', '\'s eos_token_id is "x", not'),
    ]:
        (d / "generation_config.json").write_text(text)
        with pytest.raises(ConfigError, match=re.escape(f"generation_config.json{said}")):
            read_model_eos(str(d), key="model.teacher")
        with pytest.raises(ModelError, match=re.escape(f"generation_config.json{said}")):
            load_model(str(d), vocab_size=64, role="teacher")
    (d / "generation_config.json").unlink()
    _edit_config(d, eos_token_id="x")
    with pytest.raises(
        ConfigError, match="'eos_token_id'.*fix that field of its config.json"
    ):  # transformers checks it
        read_model_eos(str(d), key="model.teacher")


def test_no_proxy_naming_the_hub_probes_the_hub_itself(hub_unreachable, monkeypatch):
    """Try-out 154, N9: with NO_PROXY naming the hub the libraries go to it directly, but the probe asked the
    proxy, and blamed it."""
    from huggingface_hub import constants

    import ekd.hub

    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:8")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert ekd.hub.endpoint_unreachable().startswith("127.0.0.1 cannot be reached")
    monkeypatch.delenv("NO_PROXY")
    ekd.hub.endpoint_unreachable.cache_clear()
    assert ekd.hub.endpoint_unreachable().startswith("the proxy 127.0.0.1:8 cannot be reached")
