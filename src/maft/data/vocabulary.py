"""Class vocabularies: ordered class names plus a seen/unseen mask (the one source of classes).

Benchmark class lists and zero-shot splits come only from the packaged
``metadata/benchmarks.json``. A user's own vocabulary comes from a list of names or a text file.

Text-file format (``Vocabulary.from_file``)::

    # comment lines and blank lines are skipped
    brick
    grass
    water | unseen        # a trailing "| unseen" marks a class without training labels
    sand | seen           # "| seen" is allowed and is the default

Names are stripped of surrounding whitespace; names may contain commas and spaces ("road, route").
Two names that differ only in case, Unicode form or inner whitespace ("zebra" and "Zebra") are
duplicates and an error, as is an empty name.

:meth:`Vocabulary.parse` reads what a user gives on the command line or in Python: a
:class:`Vocabulary`, a list of names, or a string. A string names an existing text file, or is a
list: with commas (``"cat,sofa,wall"``), or in brackets (``"[Straße, 猫]"``, what Hydra gives for
the quoted override ``vocabulary='[Straße, 猫]'``). Any other string (no comma, no brackets) is a
file path, and a file that does not exist is an error: a one-class vocabulary is a list
(``["cat"]``, ``vocabulary=[cat]`` or ``"cat,"``), never a bare word.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from maft.data.names import normalize_name
from maft.errors import VocabularyError

#: Split names accepted by :meth:`Vocabulary.from_benchmark`.
SPLITS = ("zero_shot", None)


@lru_cache(maxsize=1)
def load_benchmarks() -> dict[str, dict[str, Any]]:
    """Return the packaged benchmark metadata (class names, splits, ignore values, layouts)."""
    text = resources.files("maft.data").joinpath("metadata/benchmarks.json").read_text("utf-8")
    return json.loads(text)["benchmarks"]


def benchmark_info(benchmark: str) -> dict[str, Any]:
    """Return the metadata entry of ``benchmark`` or raise listing the valid keys."""
    table = load_benchmarks()
    if benchmark not in table:
        raise VocabularyError(
            f"unknown benchmark {benchmark!r}; valid benchmarks: {', '.join(sorted(table))}"
            + _suggest(benchmark, list(table))
        )
    return table[benchmark]


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _duplicates(names: Sequence[str]) -> list[list[str]]:
    """Groups of names with the same :func:`normalize_name` key, in first-appearance order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(normalize_name(n), []).append(n)
    return [g for g in groups.values() if len(g) > 1]


def _split_list(text: str) -> list[str]:
    """Split ``a, 'b, c', "d"`` at commas outside quotes; strip spaces and one pair of quotes."""
    items, current, quote = [], "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
            current += ch
        elif ch in "'\"":
            quote = ch
            current += ch
        elif ch == ",":
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    out = []
    for item in (i.strip() for i in items):
        if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
            item = item[1:-1].strip()
        if item:
            out.append(item)
    return out


#: Split names a run may ask for (see :meth:`Vocabulary.resolve`).
SPLITS = ("default", "zero_shot", "from_file", "all_seen", None)


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Ordered class names, which of them are seen in training, and the dataset's ignore value."""

    names: list[str]
    seen: torch.Tensor = field(repr=False)  # bool [C]
    ignore_index: int = 255
    benchmark: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        names = [str(n).strip() for n in self.names]
        if not names:
            raise VocabularyError("empty vocabulary: give at least one class name")
        if any(not n for n in names):
            raise VocabularyError(f"vocabulary has an empty class name: {self.names!r}")
        dupes = _duplicates(names)
        if dupes:
            listed = "; ".join(" and ".join(repr(n) for n in group) for group in dupes)
            raise VocabularyError(
                f"duplicate class names in vocabulary (compared case-insensitively): {listed}; "
                "give each class once"
            )
        seen = torch.as_tensor(self.seen, dtype=torch.bool).flatten()
        if seen.numel() != len(names):
            raise VocabularyError(
                f"seen mask has {seen.numel()} entries but the vocabulary has {len(names)} names"
            )
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "seen", seen)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_benchmark(cls, benchmark: str, split: str | None = "zero_shot") -> Vocabulary:
        """Vocabulary of a packaged benchmark; ``split=None`` marks every class seen."""
        info = benchmark_info(benchmark)
        names = list(info["class_names"])
        if len(names) != int(info["num_classes"]):
            raise VocabularyError(f"benchmarks.json is inconsistent for {benchmark!r}")
        if split is None or split == "all_seen":
            seen = torch.ones(len(names), dtype=torch.bool)
            split = None
        elif split == "zero_shot":
            zs = info.get("zero_shot_split")
            if not zs:
                with_split = [k for k, v in load_benchmarks().items() if v.get("zero_shot_split")]
                raise VocabularyError(
                    f"benchmark {benchmark!r} has no zero-shot split; use split=None or one of the "
                    f"benchmarks with a split: {', '.join(with_split)}"
                )
            seen = ~torch.tensor(zs["is_unseen"], dtype=torch.bool)
        else:
            raise VocabularyError(
                f"unknown split {split!r} for {benchmark!r}; valid splits: 'zero_shot', None"
            )
        return cls(names, seen, int(info["ignore_label"]), benchmark=benchmark, split=split)

    @classmethod
    def resolve(
        cls, benchmark: str, root: str | Path | None = None, split: str | None = "default"
    ) -> Vocabulary:
        """The vocabulary of a run's data, once: a packaged benchmark, a folder or the world.

        ``split`` (one of :data:`SPLITS`): ``default`` is the data's own split (the packaged
        zero-shot split when the benchmark has one, else none; the ``| unseen`` markers of
        ``root/classes.txt`` for ``folder``; the world's unseen classes for ``world``);
        ``zero_shot`` / ``from_file`` ask for that split explicitly; ``None`` or ``all_seen``:
        no split (every class seen, ``has_split`` False).
        """
        if split not in SPLITS:
            raise VocabularyError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        no_split = split in (None, "all_seen")
        if benchmark == "folder":
            if root is None:
                raise VocabularyError("data=folder needs its root folder (data.root=...)")
            from maft.data.dataset import folder_vocabulary

            own = folder_vocabulary(root)  # classes.txt, with its "| unseen" markers
        elif benchmark == "world":
            from maft.world.writer import world_vocabulary

            own = world_vocabulary()
        else:
            if no_split:
                return cls.from_benchmark(benchmark, None)
            has_split = bool(benchmark_info(benchmark).get("zero_shot_split"))
            if split == "default" and not has_split:
                return cls.from_benchmark(benchmark, None)
            return cls.from_benchmark(benchmark, "zero_shot")
        seen = torch.ones(len(own.names), dtype=torch.bool) if no_split else own.seen
        name = None if no_split else "from_file"
        return cls(own.names, seen, own.ignore_index, benchmark=benchmark, split=name)

    @classmethod
    def from_names(
        cls,
        names: Iterable[str],
        seen: Sequence[bool] | torch.Tensor | None = None,
        ignore_index: int = 255,
    ) -> Vocabulary:
        """Vocabulary from a list of names; ``seen=None`` marks every class seen."""
        names = [str(n) for n in names]
        mask = torch.ones(len(names), dtype=torch.bool) if seen is None else seen
        return cls(names, torch.as_tensor(mask, dtype=torch.bool), ignore_index)

    @classmethod
    def from_file(cls, path: str | Path, ignore_index: int = 255) -> Vocabulary:
        """Vocabulary from a text file: one name per line, optional ``| unseen`` marker."""
        path = Path(path)
        if not path.is_file():
            raise VocabularyError(f"vocabulary file not found: {path}")
        names: list[str] = []
        seen: list[bool] = []
        for lineno, raw in enumerate(path.read_text("utf-8").splitlines(), start=1):
            line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()  # drop comments
            if not line:
                continue
            name, _, marker = line.partition("|")
            marker = marker.strip().lower()
            if marker not in ("", "seen", "unseen"):
                raise VocabularyError(
                    f"{path}:{lineno}: unknown marker {marker!r} (use '| seen' or '| unseen')"
                )
            names.append(name.strip())
            seen.append(marker != "unseen")
        if not names:
            raise VocabularyError(f"vocabulary file {path} holds no class names")
        try:
            return cls(names, torch.tensor(seen, dtype=torch.bool), ignore_index)
        except VocabularyError as err:
            raise VocabularyError(f"{path}: {err}") from None

    @classmethod
    def parse(cls, spec: Any) -> Vocabulary:
        """A Vocabulary, list of names, text file or string list (rules: module docstring)."""
        if isinstance(spec, Vocabulary):
            return spec
        if isinstance(spec, (str, Path)):
            path = Path(spec)
            text = str(spec).strip()
            if path.is_file():
                return cls.from_file(path)
            if isinstance(spec, str) and text.startswith("[") and text.endswith("]"):
                names = _split_list(text[1:-1])
            elif isinstance(spec, str) and "," in text:
                names = _split_list(text)
            elif isinstance(spec, Path) or path.suffix or "/" in text or "\\" in text:
                raise VocabularyError(
                    f"vocabulary file not found: {path}; give an existing text file (one name per "
                    "line) or a list of names such as vocabulary=[cat,sofa,wall]"
                )
            else:
                raise VocabularyError(
                    f"vocabulary {text!r} is not an existing file: a single word is read as the "
                    f"path of a vocabulary file. For a one-class vocabulary give a list: "
                    f"vocabulary=[{text}] on the command line, [{text!r}] in Python, or "
                    f"{text + ','!r}; for a file, check the path (relative to the working folder)"
                )
        elif isinstance(spec, Iterable):
            names = [str(n) for n in spec]
        else:
            raise VocabularyError(
                f"vocabulary must be a list of names or a text file, got {type(spec).__name__} "
                f"{spec!r}"
            )
        if not names:
            raise VocabularyError("empty vocabulary: give at least one class name")
        return cls.from_names(names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (
            self.names == other.names
            and torch.equal(self.seen, other.seen)
            and self.ignore_index == other.ignore_index
        )

    __hash__ = None  # type: ignore[assignment]  # mutable tensor inside: not hashable

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def seen_indices(self) -> torch.Tensor:
        """Indices of seen classes, LongTensor [S]."""
        return torch.nonzero(self.seen, as_tuple=False).flatten()

    @property
    def unseen_indices(self) -> torch.Tensor:
        """Indices of unseen classes, LongTensor [U]."""
        return torch.nonzero(~self.seen, as_tuple=False).flatten()

    @property
    def has_split(self) -> bool:
        """True when some class is unseen (zero-shot protocol)."""
        return bool((~self.seen).any())

    @property
    def seen_mask(self) -> torch.Tensor | None:
        """The seen mask ``[C]`` for the ensemble and the metrics; None without a split."""
        return self.seen if self.has_split else None

    @property
    def seen_names(self) -> list[str]:
        """Names of the seen classes, in vocabulary order."""
        return [n for n, s in zip(self.names, self.seen.tolist()) if s]

    @property
    def unseen_names(self) -> list[str]:
        """Names of the unseen classes, in vocabulary order."""
        return [n for n, s in zip(self.names, self.seen.tolist()) if not s]

    def index(self, name: str) -> int:
        """Position of ``name``; unknown names raise with the closest matches."""
        key = name.strip()
        try:
            return self.names.index(key)
        except ValueError:
            raise VocabularyError(
                f"unknown class name {name!r}" + _suggest(key, self.names)
            ) from None

    def indices(self, names: Iterable[str]) -> list[int]:
        """Positions of several names (each unknown name raises)."""
        return [self.index(n) for n in names]

    def seen_class_map(self) -> torch.Tensor:
        """Map full index -> seen-only index (-1 for unseen), LongTensor [C]."""
        out = torch.full((self.num_classes,), -1, dtype=torch.long)
        out[self.seen_indices] = torch.arange(int(self.seen.sum()))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for checkpoints' hyperparameters and reports)."""
        return {
            "names": list(self.names),
            "seen": [bool(s) for s in self.seen.tolist()],
            "ignore_index": int(self.ignore_index),
            "benchmark": self.benchmark,
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        """Inverse of :meth:`to_dict`."""
        return cls(
            list(d["names"]),
            torch.tensor(d["seen"], dtype=torch.bool),
            int(d.get("ignore_index", 255)),
            benchmark=d.get("benchmark"),
            split=d.get("split"),
        )

    def write(self, path: str | Path) -> None:
        """Write the vocabulary in the :meth:`from_file` format."""
        lines = [n if s else f"{n} | unseen" for n, s in zip(self.names, self.seen.tolist())]
        Path(path).write_text("\n".join(lines) + "\n", "utf-8")


def _quote(name: str) -> str:
    return f"'{name}'" if "'" not in name else f'"{name}"'


def unquoted_override_error(argv: Sequence[str]) -> str | None:
    """Message for the first command-line override Hydra rejects for unquoted non-ASCII text.

    Hydra's override lexer takes only ASCII letters outside quotes, so ``vocabulary=[Straße,猫]``
    fails with a bare ``LexerNoViableAltException``. The message gives the quoted form to type
    instead; ``None`` when every override with non-ASCII text parses.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = None
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or arg.startswith("-") or arg.isascii():
            continue
        parser = parser or OverridesParser.create()
        try:
            parser.parse_override(arg)
            continue
        except HydraException:
            pass
        text = value.strip()
        word = not (Path(text).suffix or "/" in text or "\\" in text or "," in text)
        if text.startswith("[") and text.endswith("]"):
            quoted = f"{key}=[{','.join(_quote(n) for n in _split_list(text[1:-1]))}]"
        elif key.lstrip("+").endswith("vocabulary") and word:  # one class: a list, not a file
            quoted = f"{key}=[{_quote(text)}]"
        else:
            quoted = f"{key}={_quote(text)}"
        return (
            f"cannot read the override {arg!r}: Hydra reads non-ASCII characters only inside "
            "quotes. Quote the value (each name of a list), and the whole override for the "
            f'shell: "{quoted}"'
        )
    return None
