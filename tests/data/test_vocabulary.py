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


@pytest.mark.parametrize(
    "names, listed",
    [
        (["zebra", "wood", "Zebra"], "'zebra' and 'Zebra'"),
        (["Sea  water", "sea water"], "'Sea  water' and 'sea water'"),
        (["ｃａｔ", "cat"], "'ｃａｔ' and 'cat'"),  # full-width letters: the same name after NFKC
    ],
)
def test_duplicates_are_case_insensitive_and_named(names: list[str], listed: str) -> None:
    with pytest.raises(VocabularyError, match="duplicate") as err:
        Vocabulary.from_names(names)
    assert listed in str(err.value)


def test_case_insensitive_duplicate_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("zebra\nwood\nZebra | unseen\n", "utf-8")
    with pytest.raises(VocabularyError, match=r"classes.txt.*'zebra' and 'Zebra'"):
        Vocabulary.from_file(path)


def test_parse_lists_strings_and_files(tmp_path: Path) -> None:
    assert Vocabulary.parse(["cat"]).names == ["cat"]  # a one-word list is fine
    assert Vocabulary.parse("cat,sofa, wall").names == ["cat", "sofa", "wall"]
    assert Vocabulary.parse("cat,").names == ["cat"]
    assert Vocabulary.parse("[Straße, 猫]").names == ["Straße", "猫"]
    assert Vocabulary.parse("['road, route', \"sky\"]").names == ["road, route", "sky"]
    path = tmp_path / "classes"  # a file without a suffix is still a file
    path.write_text("brick\nsand | unseen\n", "utf-8")
    v = Vocabulary.parse(str(path))
    assert v.names == ["brick", "sand"] and v.unseen_names == ["sand"]
    assert Vocabulary.parse(v) is v


@pytest.mark.parametrize("spec", ["classes", "Straße"])
def test_bare_word_that_is_no_file_is_an_error_with_a_hint(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VocabularyError, match="not an existing file") as err:
        Vocabulary.parse(spec)
    assert f"vocabulary=[{spec}]" in str(err.value)  # how to write a one-class vocabulary


def test_missing_file_and_bad_types(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="vocabulary file not found.*nope.txt"):
        Vocabulary.parse(str(tmp_path / "nope.txt"))
    with pytest.raises(VocabularyError, match="vocabulary file not found"):
        Vocabulary.parse(tmp_path / "classes")  # a Path is always a file
    with pytest.raises(VocabularyError, match="empty vocabulary"):
        Vocabulary.parse("[]")
    with pytest.raises(VocabularyError, match="list of names"):
        Vocabulary.parse(3)


def test_hydra_non_ascii_vocabulary_quoted_and_unquoted() -> None:
    from maft.config import compose
    from maft.data.vocabulary import unquoted_override_error

    base = ["ckpt_path=x.ckpt", "image=x.jpg"]
    quoted = compose([*base, "vocabulary='[Straße, 猫]'"], config_name="predict", output_dir="o")
    assert Vocabulary.parse(quoted.vocabulary).names == ["Straße", "猫"]
    bad = "vocabulary=[Straße,猫]"
    message = unquoted_override_error([*base, bad])
    assert message is not None and "quotes" in message
    suggested = message.rsplit('"', 2)[1]  # the override the message tells the user to type
    assert suggested == "vocabulary=['Straße','猫']"
    cfg = compose([*base, suggested], config_name="predict", output_dir="o")
    assert Vocabulary.parse(list(cfg.vocabulary)).names == ["Straße", "猫"]
    assert unquoted_override_error([*base, suggested, "vocabulary=[cat]"]) is None
    one = unquoted_override_error(["vocabulary=Straße"])
    assert one is not None and "\"vocabulary=['Straße']\"" in one  # one class: a list
