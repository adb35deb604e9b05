"""The built-in world: a procedural texture benchmark and its tiny CLIP.

- :mod:`maft.world.textures`: one procedural texture painter per class.
- :mod:`maft.world.scenes`: region layouts, label maps and captions (:func:`generate_scene`).
- :mod:`maft.world.writer`: :func:`write_world` writes the custom-folder dataset format.
- :mod:`maft.world.pretrain`: contrastive pretraining of the ``maft-world`` CLIP and its zero-shot
  evaluation (imported lazily: it needs torch and open_clip).
"""

from __future__ import annotations

from maft.world.scenes import (
    GENERATOR_VERSION,
    UNSEEN_CLASSES,
    WORLD_CLASSES,
    Scene,
    caption_from_label,
    generate_scene,
    scene_rng,
)
from maft.world.writer import world_vocabulary, write_world

__all__ = [
    "GENERATOR_VERSION",
    "UNSEEN_CLASSES",
    "WORLD_CLASSES",
    "Scene",
    "caption_from_label",
    "generate_scene",
    "scene_rng",
    "world_vocabulary",
    "write_world",
]
