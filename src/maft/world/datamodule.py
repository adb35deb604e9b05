"""WorldDataModule: the built-in world written on first use, then read as a custom folder dataset.

Everything after generation goes through the production readers (the custom-folder format of
docs/datasets.md), exactly as a user's own dataset would.
"""

from __future__ import annotations

from typing import Any

from maft.data.datamodule import FolderDataModule
from maft.data.vocabulary import Vocabulary
from maft.errors import ConfigError
from maft.world.writer import write_world


class WorldDataModule(FolderDataModule):
    """Generate (or reuse) the world under ``root``, then serve it like ``data=folder``.

    ``n_train``/``n_val``/``n_heldout``/``image_size``/``seed`` define the world (a different
    value writes a new one); every other keyword is a :class:`FolderDataModule` argument
    (misspelled keys fail there).
    """

    def __init__(
        self,
        *,
        root: str,
        benchmark: str = "world",
        n_train: int = 2000,
        n_val: int = 500,
        n_heldout: int = 0,
        image_size: int = 64,
        seed: int = 0,
        vocabulary: Vocabulary | None = None,
        progress: bool = True,
        **folder_kwargs: Any,
    ) -> None:
        if benchmark != "world":
            raise ConfigError(f"WorldDataModule serves benchmark 'world', not {benchmark!r}")
        self.world = write_world(
            root, n_train, n_val, size=image_size, seed=seed, progress=progress, n_heldout=n_heldout
        )
        super().__init__(benchmark="folder", root=root, vocabulary=vocabulary, **folder_kwargs)
        self.test_names = ["world"]
