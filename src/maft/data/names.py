"""Class-name normalisation shared by vocabularies (duplicate check) and pictures (colours).

Torch-free so :mod:`maft.viz` can use it without importing the model stack.
"""

from __future__ import annotations

import unicodedata


def normalize_name(name: str) -> str:
    """Comparison key of a class name: NFKC, case-folded, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", str(name)).casefold().split())


__all__ = ["normalize_name"]
