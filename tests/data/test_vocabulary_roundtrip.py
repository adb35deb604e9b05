"""Vocabulary round trips keep every field; equality looks at names, seen mask and ignore value.

``to_dict``/``from_dict`` is how checkpoints carry a vocabulary (MaftTask hyperparameters), so it
must keep names, seen mask, ignore value, benchmark and split, also through JSON. ``write`` /
``from_file`` keeps what the text format holds (names and seen/unseen markers; the ignore value
is the reader's argument).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maft.data.vocabulary import Vocabulary

FIELDS = ("names", "seen", "ignore_index", "benchmark", "split")


def _vocabularies() -> dict[str, Vocabulary]:
    """Vocabularies covering every field: benchmark splits, ignore values, unusual names."""
    return {
        "voc_zero_shot": Vocabulary.from_benchmark("voc_20", split="zero_shot"),
        "ade847_zero_shot": Vocabulary.from_benchmark("ade20k_847", split="zero_shot"),
        "pc59_all_seen": Vocabulary.from_benchmark("pcontext_59", split=None),
        "names": Vocabulary.from_names(
            ["road, route", "Straße", "猫", "traffic light", "sky"],
            seen=[True, False, True, False, True],
            ignore_index=7,
        ),
    }


VOCABS = _vocabularies()


def _assert_same_fields(a: Vocabulary, b: Vocabulary, fields: tuple[str, ...] = FIELDS) -> None:
    """Field-by-field equality (the seen mask as a bool tensor of the same values)."""
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and y.dtype == torch.bool, f
            assert torch.equal(x, y), f
        else:
            assert x == y and type(x) is type(y), f"{f}: {x!r} != {y!r}"


def test_benchmark_vocabularies_carry_benchmark_and_split() -> None:
    """The fixtures really set every field (so the round trips below compare something)."""
    v = VOCABS["voc_zero_shot"]
    assert v.benchmark == "voc_20" and v.split == "zero_shot" and v.has_split
    assert VOCABS["ade847_zero_shot"].ignore_index == 65535
    assert VOCABS["pc59_all_seen"].benchmark == "pcontext_59"
    assert VOCABS["names"].ignore_index == 7 and VOCABS["names"].has_split


@pytest.mark.parametrize("key", sorted(VOCABS))
def test_dict_round_trip_keeps_every_field(key: str) -> None:
    """from_dict(to_dict(v)) equals v field by field, directly and through JSON."""
    v = VOCABS[key]
    d = v.to_dict()
    assert set(FIELDS) <= set(d)
    _assert_same_fields(Vocabulary.from_dict(d), v)
    _assert_same_fields(Vocabulary.from_dict(json.loads(json.dumps(d))), v)
    assert Vocabulary.from_dict(d) == v
    assert Vocabulary.from_dict(d).to_dict() == d


def test_from_dict_without_optional_keys() -> None:
    """A dict with names and seen only: ignore 255, no benchmark, no split."""
    v = Vocabulary.from_dict({"names": ["a", "b"], "seen": [True, False]})
    assert v.names == ["a", "b"] and v.seen.tolist() == [True, False]
    assert v.ignore_index == 255 and v.benchmark is None and v.split is None


@pytest.mark.parametrize("key", sorted(VOCABS))
def test_file_round_trip_keeps_names_and_seen_mask(key: str, tmp_path: Path) -> None:
    """from_file(write(v)) gives the same names and seen mask; the ignore value is the reader's."""
    v = VOCABS[key]
    path = tmp_path / "vocab.txt"
    v.write(path)
    back = Vocabulary.from_file(path, ignore_index=v.ignore_index)
    _assert_same_fields(back, v, ("names", "seen", "ignore_index"))
    assert back == v
    assert Vocabulary.from_file(path).ignore_index == 255


def test_equality_depends_on_the_seen_mask() -> None:
    """Two vocabularies that differ only in the seen mask are not equal."""
    a = Vocabulary.from_names(["cat", "sofa", "wall"], seen=[True, False, True])
    b = Vocabulary.from_names(["cat", "sofa", "wall"], seen=[True, True, True])
    c = Vocabulary.from_names(["cat", "sofa", "wall"], seen=[True, False, True])
    assert a == c and not (a != c)
    assert a != b and not (a == b)
    assert Vocabulary.from_benchmark("voc_20", "zero_shot") != Vocabulary.from_benchmark(
        "voc_20", None
    )


def test_equality_depends_on_names_order_and_ignore_value() -> None:
    """Other names, another order or another ignore value make vocabularies differ."""
    a = Vocabulary.from_names(["cat", "sofa"], seen=[True, False])
    assert a != Vocabulary.from_names(["cat", "chair"], seen=[True, False])
    assert a != Vocabulary.from_names(["sofa", "cat"], seen=[False, True])
    assert a != Vocabulary.from_names(["cat", "sofa"], seen=[True, False], ignore_index=0)
    assert a != ["cat", "sofa"]
