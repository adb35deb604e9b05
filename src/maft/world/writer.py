"""Write the built-in world to disk in the custom-folder dataset format.

Layout under ``root``::

    images/{train,val,heldout}/<id>.png   RGB uint8 scenes
    labels/{train,val,heldout}/<id>.png   8-bit class index per pixel (255 never written)
    classes.txt                     one class per line, unseen ones suffixed "| unseen"
    captions/<split>.jsonl          {"file": "<id>.png", "caption": "..."} per image
    world.json                      seed, sizes, classes, generator version (the idempotence key)

Scene ``i`` of a split depends only on ``(seed, split, i)``, so splits never share images.
``val`` is the test split; ``heldout`` is the validation split of training-time selection (the
MAFT length), read with its unseen pixels ignored (``data.val_seen_only``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from maft.data.vocabulary import Vocabulary
from maft.errors import DatasetLayoutError
from maft.world.scenes import (
    GENERATOR_VERSION,
    UNSEEN_CLASSES,
    WORLD_CLASSES,
    generate_scene,
    scene_rng,
)


def world_vocabulary() -> Vocabulary:
    """The world's vocabulary: 16 classes, :data:`UNSEEN_CLASSES` marked unseen, ignore 255."""
    return Vocabulary.from_names(WORLD_CLASSES, [c not in UNSEEN_CLASSES for c in WORLD_CLASSES])


def _manifest(n_train: int, n_val: int, n_heldout: int, size: int, seed: int) -> dict[str, Any]:
    out = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": int(size),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "classes": list(WORLD_CLASSES),
        "unseen": list(UNSEEN_CLASSES),
        "ignore_index": 255,
    }
    if n_heldout:  # worlds written without a heldout split keep their key
        out["n_heldout"] = int(n_heldout)
    return out


def _complete(root: Path, manifest: dict[str, Any]) -> bool:
    """True when ``root`` holds a finished world with exactly this manifest."""
    path = root / "world.json"
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError:
        return False
    return {k: old.get(k) for k in manifest} == manifest


def _write_split(root: Path, split: str, n: int, size: int, seed: int, progress: bool) -> None:
    img_dir, lab_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(n), desc=f"world {split}", disable=not progress, unit="img"):
        scene = generate_scene(scene_rng(seed, split, i), size)
        name = f"{i:06d}.png"
        Image.fromarray(scene.image, "RGB").save(img_dir / name, compress_level=1)
        Image.fromarray(scene.label, "L").save(lab_dir / name, compress_level=1)
        lines.append(json.dumps({"file": name, "caption": scene.caption}))
    (root / "captions").mkdir(exist_ok=True)
    (root / "captions" / f"{split}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")


def write_world(
    root: str | Path,
    n_train: int,
    n_val: int,
    size: int = 64,
    seed: int = 0,
    progress: bool = True,
    n_heldout: int = 0,
) -> dict[str, Any]:
    """Write the world's train/val(/heldout) splits under ``root``; skip if ``world.json`` matches.

    Returns the manifest (``world.json``'s content) plus ``root`` and ``skipped``.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetLayoutError(f"world root {root} exists and is not a folder; pick another path")
    manifest = _manifest(n_train, n_val, n_heldout, size, seed)
    if _complete(root, manifest):
        return {**manifest, "root": str(root), "skipped": True}
    root.mkdir(parents=True, exist_ok=True)
    (root / "world.json").unlink(missing_ok=True)  # an interrupted write leaves no valid key
    for split, n in (("train", n_train), ("val", n_val), ("heldout", n_heldout)):
        if n > 0:
            _write_split(root, split, n, size, seed, progress)
    world_vocabulary().write(root / "classes.txt")
    (root / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    return {**manifest, "root": str(root), "skipped": False}


def read_captions(root: str | Path, split: str) -> list[dict[str, str]]:
    """Read ``captions/<split>.jsonl`` of a written world: ``[{"file", "caption"}, ...]``."""
    path = Path(root) / "captions" / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetLayoutError(f"caption file {path} not found; run write_world({root!s}, ...)")
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def load_label(path: str | Path) -> np.ndarray:
    """Read one label PNG as ``uint8 [H, W]``."""
    return np.asarray(Image.open(path), dtype=np.uint8)
