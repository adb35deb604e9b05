"""Named errors raised at every boundary of maft (files, vocabularies, checkpoints, configs).

Each class also subclasses the natural builtin so callers can catch either.
"""

from __future__ import annotations


class MaftError(Exception):
    """Base class of every error maft raises on purpose."""


class DatasetLayoutError(MaftError, FileNotFoundError):
    """A dataset root, split folder or paired file is missing or does not match its layout."""

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno-style tuples
        return str(self.args[0]) if self.args else ""


class DatasetFileError(MaftError, ValueError):
    """A dataset file exists but cannot be used (corrupt image, size mismatch, empty split)."""


class LabelValueError(MaftError, ValueError):
    """A label map or prediction holds values outside [0, C) other than the ignore value."""


class VocabularyError(MaftError, KeyError):
    """Unknown benchmark, split or class name; empty or duplicated vocabulary."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(MaftError, KeyError):
    """A checkpoint file has wrong or missing keys, or belongs to another model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(MaftError, ValueError):
    """A configuration value is missing or inconsistent."""


__all__ = [
    "MaftError",
    "DatasetLayoutError",
    "DatasetFileError",
    "LabelValueError",
    "VocabularyError",
    "CheckpointError",
    "ConfigError",
]
