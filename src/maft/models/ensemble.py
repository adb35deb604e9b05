"""λ-ensemble of proposal scores A^p and CLIP scores A^c (docs/method.md §4.2).

``form="code"`` (zsseg / FreeSeg / MAFT ``semantic_inference``)::

    seen:   Â = A^p^λ     · A^c^(1−λ)
    unseen: Â = A^p^(1−λ) · A^c^λ

``form="eq1"`` (supplementary Eq. 1, A^p for seen classes only)::

    seen:   Â = A^p^λ · A^c^(1−λ)
    unseen: Â = A^c^λ

``seen=None`` (cross-dataset, no ``trainable_flag``) sends every class through the unseen branch.
``λ = 0`` switches the ensemble off and returns ``A^c`` unchanged in both forms, as every released
MAFT config does (the code form would otherwise give ``A^p`` for unseen classes). Invalid
proposals (empty binary mask) get ``A^c = 1`` before the product ("map back").
"""

from __future__ import annotations

import torch

from maft.errors import ConfigError

FORMS = ("code", "eq1")


def _check(
    A_p: torch.Tensor | None,
    A_c: torch.Tensor,
    seen: torch.Tensor | None,
    lam: float,
    form: str,
    valid: torch.Tensor | None,
) -> None:
    """Validate the ensemble arguments, raising ``ConfigError`` with the offending value."""
    if form not in FORMS:
        raise ConfigError(f"Unknown ensemble form {form!r}; choose one of {list(FORMS)}.")
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"Ensemble weight lambda_ must lie in [0, 1], got {lam}.")
    if lam > 0 and A_p is None:
        raise ConfigError("lambda_ > 0 needs the proposal scores A_p; pass them or set lambda_=0.")
    if A_p is not None and A_p.shape != A_c.shape:
        raise ConfigError(
            f"A_p {tuple(A_p.shape)} and A_c {tuple(A_c.shape)} must both be [B, N, C] over the "
            "same vocabulary (drop the void column of A_p first)."
        )
    if seen is not None and seen.numel() != A_c.shape[-1]:
        raise ConfigError(
            f"`seen` has {seen.numel()} entries but the scores have {A_c.shape[-1]} classes."
        )
    if valid is not None and valid.shape != A_c.shape[:2]:
        raise ConfigError(
            f"`valid` must be [B, N] = {tuple(A_c.shape[:2])}, got {tuple(valid.shape)}."
        )


def ensemble_scores(
    A_p: torch.Tensor | None,
    A_c: torch.Tensor,
    seen: torch.Tensor | None,
    lam: float,
    form: str,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Combine proposal and CLIP class probabilities per proposal (§4.2).

    Args:
        A_p: ``[B, N, C]`` proposal-head probabilities (void column dropped); may be None if λ = 0.
        A_c: ``[B, N, C]`` CLIP probabilities.
        seen: ``[C]`` bool, True for seen (trainable) classes; None: every class is unseen.
        lam: λ in [0, 1] (``CLIP_ENSEMBLE_WEIGHT``); 0 returns ``A_c`` itself.
        form: ``"code"`` (default) or ``"eq1"``.
        valid: ``[B, N]`` bool, False for proposals with an empty binary mask (their ``A_c`` → 1).

    Returns:
        ``[B, N, C]`` ensembled scores Â.
    """
    _check(A_p, A_c, seen, lam, form, valid)
    if lam == 0:
        return A_c
    if valid is not None:
        A_c = torch.where(valid.to(A_c.device).unsqueeze(-1), A_c, torch.ones_like(A_c))
    if seen is None:
        seen = torch.zeros(A_c.shape[-1], dtype=torch.bool, device=A_c.device)
    seen = seen.to(device=A_c.device, dtype=torch.bool)  # [C], broadcast over [B, N, C]
    seen_branch = A_p.pow(lam) * A_c.pow(1.0 - lam)
    if form == "code":
        unseen_branch = A_p.pow(1.0 - lam) * A_c.pow(lam)
    else:
        unseen_branch = A_c.pow(lam)
    return torch.where(seen, seen_branch, unseen_branch)


__all__ = ["FORMS", "ensemble_scores"]
