"""The model probes (output head, document isolation) measure the model, not the run's matmul precision: they
run in IEEE fp32 without autocast (ekd.models.exact.ieee_fp32). On an H200 with TF32 on, as every GPU run sets
it, the head probe refused the demo's own fp32 llama student (2.8e-4 of the logit scale > 1e-4)."""

from __future__ import annotations

import pytest
import torch

from ekd.models.exact import ieee_fp32
from ekd.models.isolation import check_document_isolation
from ekd.models.load import build_preset, check_output_head
from ekd.train.precision import enable_tf32

V = 512


@pytest.fixture
def tf32_on():
    """The process-wide settings a GPU run leaves (TF32 for fp32 matmuls), restored after the test."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "tf32"
    yield
    matmul.fp32_precision, conv.fp32_precision = saved


def _record_arithmetic(model: torch.nn.Module) -> list[tuple[str, str, bool]]:
    """Every forward of ``model``'s first decoder layer records (matmul, conv precision, CPU autocast on)."""
    seen: list[tuple[str, str, bool]] = []
    layer = model.model.layers[0]
    layer.register_forward_pre_hook(
        lambda *_: seen.append(
            (
                torch.backends.cuda.matmul.fp32_precision,
                torch.backends.cudnn.conv.fp32_precision,
                torch.is_autocast_enabled("cpu"),
            )
        )
    )
    return seen


@pytest.mark.parametrize("probe", [check_output_head, check_document_isolation])
def test_probes_run_in_ieee_fp32_without_autocast_and_restore_the_run_settings(tf32_on, probe) -> None:
    model = build_preset("llama-micro", V, eos_token_id=0)
    seen = _record_arithmetic(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller under the run's autocast
        probe(model, V)
        assert torch.is_autocast_enabled("cpu")
    assert seen and set(seen) == {("ieee", "ieee", False)}
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


def test_ieee_fp32_restores_the_settings_when_the_block_raises(tf32_on) -> None:
    with pytest.raises(ValueError), ieee_fp32("cpu"):
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        raise ValueError
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", ["llama-tiny", "qwen2.5-0.5b-shape"])
def test_fp32_models_pass_both_probes_on_a_gpu_with_tf32_on(tf32_on, preset) -> None:
    """The H200 case: fp32 weights on CUDA after ``enable_tf32`` (what ``ekd distill`` does before loading)."""
    assert enable_tf32("auto", torch.device("cuda"))
    with torch.device("cuda"):
        model = build_preset(preset, 32_768, eos_token_id=0)
    check_output_head(model, 32_768, "student")
    check_document_isolation(model, 32_768, "student")
