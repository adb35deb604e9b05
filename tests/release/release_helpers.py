"""Comparison helpers of the release-parity tests (a module with a unique name, importable)."""

from __future__ import annotations

import torch


def sub_state_dict(state_dict: dict, prefix: str) -> dict:
    """The entries of ``state_dict`` under ``prefix`` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str) -> None:
    """max |a - e| <= rel * max |e| (the golden README's tolerance form)."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = float(expected.abs().max().clamp_min(1e-12))
    err = float((actual.float() - expected.float()).abs().max())
    assert err <= rel * scale, f"{name}: max abs err {err:.3e} > {rel:g} * {scale:.3e}"


def golden_kwargs(golden: dict) -> dict:
    """FreeSegGenerator kwargs of a golden set, read from its official config.yaml."""
    from maft.models.release import generator_from_config, read_official_config

    return generator_from_config(read_official_config(golden["config"]), "config.yaml")
