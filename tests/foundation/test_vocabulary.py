"""Vocabulary: counts against benchmarks.json, splits, files and named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maft.data.vocabulary import Vocabulary, load_benchmarks
from maft.errors import VocabularyError

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "benchmarks.json"

EXPECTED = {  # benchmark: (classes, seen, unseen, ignore)
    "coco_stuff_171": (171, 156, 15, 255),
    "voc_20": (20, 15, 5, 255),
    "ade20k_847": (847, 572, 275, 65535),
}
NO_SPLIT = {"ade20k_150": 150, "pcontext_59": 59, "pcontext_459": 459, "pas_20": 20}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_zero_shot_counts(key: str) -> None:
    c, s, u, ignore = EXPECTED[key]
    v = Vocabulary.from_benchmark(key, split="zero_shot")
    assert len(v.names) == c and v.seen.dtype == torch.bool and v.seen.shape == (c,)
    assert int(v.seen.sum()) == s and len(v.unseen_indices) == u and len(v.seen_indices) == s
    assert v.ignore_index == ignore
    info = load_benchmarks()[key]
    assert v.unseen_indices.tolist() == info["zero_shot_split"]["unseen_indices"]
    assert [v.names[i] for i in v.unseen_indices] == info["unseen_class_names"]


@pytest.mark.parametrize("key", sorted(NO_SPLIT))
def test_no_split_benchmarks(key: str) -> None:
    v = Vocabulary.from_benchmark(key, split=None)
    assert len(v) == NO_SPLIT[key] and bool(v.seen.all()) and not v.has_split
    with pytest.raises(VocabularyError, match="no zero-shot split"):
        Vocabulary.from_benchmark(key, split="zero_shot")


def test_all_seen_split_and_ignore_of_pc459() -> None:
    v = Vocabulary.from_benchmark("coco_stuff_171", split=None)
    assert bool(v.seen.all()) and v.unseen_indices.numel() == 0
    assert Vocabulary.from_benchmark("pcontext_459", split=None).ignore_index == 65535


@pytest.mark.skipif(not REFERENCE.is_file(), reason="shared reference not beside the checkout")
def test_packaged_metadata_matches_reference() -> None:
    ref = json.loads(REFERENCE.read_text())["benchmarks"]
    assert load_benchmarks() == ref


def test_unknown_benchmark_lists_valid_keys() -> None:
    with pytest.raises(VocabularyError, match="coco_stuff_171") as e:
        Vocabulary.from_benchmark("coco_stuf_171")
    assert "did you mean" in str(e.value)
    with pytest.raises(KeyError):  # also the natural builtin
        Vocabulary.from_benchmark("nope")
    with pytest.raises(VocabularyError, match="unknown split"):
        Vocabulary.from_benchmark("voc_20", split="fewshot")


def test_from_names_and_lookup() -> None:
    v = Vocabulary.from_names([" cat", "sofa ", "wall"], seen=[True, False, True])
    assert v.names == ["cat", "sofa", "wall"]
    assert v.unseen_names == ["sofa"] and v.seen_names == ["cat", "wall"]
    assert v.index("wall") == 2
    assert v.seen_class_map().tolist() == [0, -1, 1]
    with pytest.raises(VocabularyError, match="'wal'.*did you mean 'wall'"):
        v.index("wal")
    assert Vocabulary.from_dict(v.to_dict()).names == v.names


@pytest.mark.parametrize(
    "names, match",
    [([], "empty vocabulary"), (["a", "b", "a"], "duplicate"), (["a", "  "], "empty class name")],
)
def test_bad_name_lists(names: list[str], match: str) -> None:
    with pytest.raises(VocabularyError, match=match):
        Vocabulary.from_names(names)


def test_from_file_markers_and_comments(tmp_path: Path) -> None:
    p = tmp_path / "classes.txt"
    p.write_text("# my classes\nbrick\n\nroad, route\nwater | unseen  # no labels\nsand | seen\n")
    v = Vocabulary.from_file(p)
    assert v.names == ["brick", "road, route", "water", "sand"]
    assert v.seen.tolist() == [True, True, False, True]
    out = tmp_path / "round.txt"
    v.write(out)
    w = Vocabulary.from_file(out)
    assert w.names == v.names and torch.equal(w.seen, v.seen)


def test_from_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="missing.txt"):
        Vocabulary.from_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(VocabularyError, match="empty.txt"):
        Vocabulary.from_file(empty)
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ncat\n")
    with pytest.raises(VocabularyError, match="dup.txt.*duplicate"):
        Vocabulary.from_file(dup)
    bad = tmp_path / "bad.txt"
    bad.write_text("cat | maybe\n")
    with pytest.raises(VocabularyError, match="bad.txt:1"):
        Vocabulary.from_file(bad)
