"""λ-ensemble (docs/method.md §4.2) against a float64 elementwise formula in both forms."""

from __future__ import annotations

import pytest
import torch

from maft.errors import ConfigError
from maft.models.ensemble import ensemble_scores


def elementwise(A_p, A_c, seen, lam, form, valid=None) -> torch.Tensor:
    """Reference: a loop over every (b, n, c) entry with Python floats."""
    out = torch.empty_like(A_c, dtype=torch.float64)
    b_, n_, c_ = A_c.shape
    for b in range(b_):
        for n in range(n_):
            for c in range(c_):
                p, a = float(A_p[b, n, c]), float(A_c[b, n, c])
                if valid is not None and not bool(valid[b, n]):
                    a = 1.0
                if seen is not None and bool(seen[c]):
                    out[b, n, c] = p**lam * a ** (1 - lam)
                elif form == "code":
                    out[b, n, c] = p ** (1 - lam) * a**lam
                else:
                    out[b, n, c] = a**lam
    return out


def _scores(gen, b=2, n=4, c=5):
    A_p = torch.rand(b, n, c, generator=gen, dtype=torch.float64)
    A_c = torch.rand(b, n, c, generator=gen, dtype=torch.float64).softmax(-1)
    return A_p, A_c


@pytest.mark.parametrize("form", ["code", "eq1"])
@pytest.mark.parametrize("lam", [0.3, 0.8, 1.0])
@pytest.mark.parametrize("split", [True, False])
def test_matches_elementwise_formula(gen, form: str, lam: float, split: bool) -> None:
    A_p, A_c = _scores(gen)
    seen = torch.tensor([True, False, True, True, False]) if split else None
    valid = torch.tensor([[True, False, True, True], [True, True, True, False]])
    got = ensemble_scores(A_p, A_c, seen, lam, form=form, valid=valid)
    assert torch.allclose(got, elementwise(A_p, A_c, seen, lam, form, valid), rtol=1e-12)
    plain = ensemble_scores(A_p, A_c, seen, lam, form=form)
    assert torch.allclose(plain, elementwise(A_p, A_c, seen, lam, form), rtol=1e-12)


@pytest.mark.parametrize("form", ["code", "eq1"])
def test_lambda_zero_returns_clip_scores_exactly(gen, form: str) -> None:
    A_p, A_c = _scores(gen)
    seen = torch.tensor([True, False, True, True, False])
    valid = torch.zeros(2, 4, dtype=torch.bool)  # no map back either: the ensemble is off
    assert torch.equal(ensemble_scores(A_p, A_c, seen, 0.0, form=form, valid=valid), A_c)
    assert torch.equal(ensemble_scores(None, A_c, None, 0, form=form), A_c)
    # the raw code formula at λ = 0 would give A_p^1 · A_c^0 = A_p for unseen classes
    raw = elementwise(A_p, A_c, seen, 0.0, "code")
    assert torch.allclose(raw[..., ~seen], A_p[..., ~seen])


def test_seen_none_uses_unseen_branch_everywhere(gen) -> None:
    A_p, A_c = _scores(gen)
    all_unseen = torch.zeros(5, dtype=torch.bool)
    got = ensemble_scores(A_p, A_c, None, 0.4, form="code")
    assert torch.equal(got, ensemble_scores(A_p, A_c, all_unseen, 0.4, form="code"))
    assert torch.allclose(got, A_p**0.6 * A_c**0.4)


def test_bad_arguments_raise(gen) -> None:
    A_p, A_c = _scores(gen)
    with pytest.raises(ConfigError, match="form"):
        ensemble_scores(A_p, A_c, None, 0.5, form="paper")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        ensemble_scores(A_p, A_c, None, 1.5, form="code")
    with pytest.raises(ConfigError, match="A_p"):
        ensemble_scores(None, A_c, None, 0.5, form="code")
    with pytest.raises(ConfigError, match="void"):
        ensemble_scores(torch.cat([A_p, A_p[..., :1]], -1), A_c, None, 0.5, form="code")
    with pytest.raises(ConfigError, match="3 entries"):
        ensemble_scores(A_p, A_c, torch.ones(3, dtype=torch.bool), 0.5, form="code")
