"""EGAD's feature branch (METHODS §6): hidden-state matching on the hard (high teacher entropy) tokens.

EGAD (arXiv 2605.01732) is known from its abstract only: a "dual-branch" loss where easy tokens get logit
KD and hard tokens get logit KD plus a feature loss through a learned projection. Everything below that the
abstract does not state is our choice, exposed as a ``method.feature_*`` knob (unverified):

- hard = the top ``feature_hard_fraction`` (default 0.5) of the selected tokens by teacher entropy;
- loss = λ_feat·Σ_hard MSE(P·h_s, h_t) (mean over the teacher's D_t dims) or Σ_hard (1 − cos(P·h_s, h_t));
- P: a linear D_s → D_t map with bias, trained with the student; layers default to the last hidden layer.

The step gathers hidden states at the hard rows only, calls ``feature_loss_sum`` and divides by its global
count once (STYLE 3–4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ekd.errors import ConfigError
from ekd.losses.decoupled import top_fraction_mask
from ekd.models.text_config import text_config
from ekd.words import counted

FEATURE_LOSSES = ("mse", "cosine")


class FeatureProjection(nn.Module):
    """Learned linear map P: D_s → D_t (with bias) from student to teacher hidden space (EGAD, unverified).

    Initialization: a (semi-)orthogonal weight and a zero bias. All singular values of P are 1, so at
    step 0 P preserves the norms and angles of the student's hidden states (condition number 1, no
    direction amplified or collapsed) and the feature loss starts at the scale of the raw hidden states
    rather than at an arbitrary one set by a random Gaussian/uniform matrix (whose spectrum spreads with
    D_s/D_t). When D_s = D_t this is a random rotation, not the identity: the two models' coordinates are
    not aligned, so the identity has no special claim.

    Trained with the student by the same optimizer, but **not** part of the exported student: the trainer
    saves its ``state_dict`` in the training checkpoint separately and leaves it out of the model directory.
    Parameters are fp32 whatever the student's dtype.
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.linear = nn.Linear(student_dim, teacher_dim, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, student_hidden: Tensor) -> Tensor:
        """(H, D_s) → (H, D_t) in fp32, outside autocast."""
        with torch.autocast(device_type=student_hidden.device.type, enabled=False):
            return self.linear(student_hidden.float())  # (H, Dt)


def check_hidden_state_index(model: nn.Module, index: int, key: str, role: str) -> None:
    """Refuse a feature layer ``index`` outside the model's ``hidden_states`` (transformers'
    ``output_hidden_states``: L + 1 tensors for L decoder layers — 0 the embedding output, k the output of decoder
    layer k, L (= −1) the final hidden state after the model's last norm; negative indices count from the end).

    Raises:
        ConfigError: ``index`` outside −(L+1)…L, naming ``key``, ``role`` and the range (try-out 58, F1: an
            IndexError traceback at the first step).
    """
    config = text_config(model.config)
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or -(layers + 1) <= index <= layers:
        return
    raise ConfigError(
        f"{key}={index} is outside the {role}'s hidden states: it has {counted(layers, 'decoder layer')}, so 0…{layers} "
        f"(0 = the embeddings, k = decoder layer k's output, {layers} or -1 = the final hidden state after its "
        f"norm) or -{layers + 1}…-1 from the end; set {key} in that range"
    )


def hard_token_mask(teacher_entropy: Tensor, hard_fraction: float) -> Tensor:
    """Hard tokens of the feature branch: the ⌈f·M⌉ highest teacher entropies among the selected rows.

    Args:
        teacher_entropy: (M,) teacher entropy (or normalized entropy Ĥ; only the order matters) at the rows.
        hard_fraction: f ∈ [0, 1] (``method.feature_hard_fraction``); 0 → none, 1 → all.

    Returns:
        (M,) bool; ties broken by the lower row index.
    """
    return top_fraction_mask(teacher_entropy, hard_fraction)


def feature_loss_sum(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    projection: FeatureProjection | nn.Module,
    kind: str = "mse",
) -> Tensor:
    """Feature-matching loss summed over the H hard rows (EGAD, unverified form).

    mse:    Σ_i (1/D_t)·‖P·h_s,i − h_t,i‖²
    cosine: Σ_i (1 − cos(P·h_s,i, h_t,i))

    Args:
        student_hidden: (H, D_s) student hidden states at the hard rows (with grad).
        teacher_hidden: (H, D_t) teacher hidden states at the same rows (detached here).
        projection: P, D_s → D_t (with grad).
        kind: 'mse' or 'cosine' (``method.feature_loss``).

    Returns:
        Scalar fp32 sum; an exact 0 connected to the graph when H = 0.
    """
    if kind not in FEATURE_LOSSES:
        raise ConfigError(f"method.feature_loss must be one of {FEATURE_LOSSES}, got '{kind}'")
    projected = projection(student_hidden).float()  # (H, Dt)
    target = teacher_hidden.detach().float()  # (H, Dt)
    if projected.shape != target.shape:
        raise ValueError(
            f"projected student features {tuple(projected.shape)} do not match teacher features "
            f"{tuple(target.shape)}"
        )
    with torch.autocast(device_type=projected.device.type, enabled=False):
        if kind == "mse":
            per_row = (projected - target).pow(2).mean(-1)  # (H,)
        else:
            per_row = 1.0 - F.cosine_similarity(projected, target, dim=-1, eps=1e-8)  # (H,)
    return per_row.sum()


__all__ = ["FeatureProjection", "hard_token_mask", "feature_loss_sum", "FEATURE_LOSSES"]
