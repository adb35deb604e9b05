"""Scene layout of the built-in world: 1-4 textured regions, label map and caption.

A scene is a ``[S, S]`` region map (domain-warped Voronoi cells, wavy tilted bands, or blobs over a
background), each region painted with a distinct class texture from ``maft.world.textures``.
Boundaries are hard: every pixel belongs to exactly one class and the label map holds no ignore
value (255 never occurs). Every region covers at least ``min_frac`` of the image. The caption names
every class present, in random order. Everything is deterministic from a
``numpy.random.Generator``; :func:`scene_rng` derives one per (seed, stream, index).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from maft.world.textures import _grid, paint, value_noise

#: Generator version, stored in ``world.json``; bump it whenever a scene's pixels could change.
GENERATOR_VERSION = 1

#: The world's classes, in label order (index = label value).
WORLD_CLASSES: tuple[str, ...] = (
    "sky", "grass", "water", "sand", "brick", "wood", "snow", "gravel",
    "leaves", "marble", "lava", "tiles", "zebra", "tiger", "leopard", "giraffe",
)  # fmt: skip

#: Classes without masks in segmentation training. Each shares cues with seen classes:
#: water (blue, like sky), wood (stripes and brown, like zebra/brick), marble (light stone, like
#: snow/tiles), tiger (stripes like zebra, orange fur like leopard/giraffe).
UNSEEN_CLASSES: tuple[str, ...] = ("water", "wood", "marble", "tiger")

#: Random streams of :func:`scene_rng`: disjoint data for every use of the world.
STREAMS = {
    "train": 1, "val": 2, "pool": 3, "eval_image": 4, "eval_region": 5, "crop": 6, "heldout": 7,
}  # fmt: skip

MAX_CAPTION_TOKENS = 18  # content tokens: 18 + start/end tokens = context length 20

_TEMPLATES = (
    "a texture of {}.",
    "a photo of {}.",
    "this is a photo of {}.",
    "there is {} in the scene.",
    "a photo of {} in the scene.",
    "a scene with {}.",
    "{}.",
)
_TOKEN_RE = re.compile(r"[a-z]+|[^\sa-z]")


@dataclass
class Scene:
    """One generated scene: RGB image, label map, classes present and caption."""

    image: np.ndarray  # uint8 [S, S, 3]
    label: np.ndarray  # uint8 [S, S], values in [0, 16)
    classes: list[int]  # class index of each region, region order
    caption: str


def scene_rng(seed: int, stream: str | int, index: int) -> np.random.Generator:
    """Independent generator for item ``index`` of ``stream`` (a :data:`STREAMS` key or int)."""
    code = STREAMS[stream] if isinstance(stream, str) else int(stream)
    return np.random.default_rng([int(seed), code, int(index)])


# ---------------------------------------------------------------------------- layouts
def _voronoi(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """Domain-warped Voronoi cells around ``k`` random seeds -> region map ``[S, S]``."""
    yy, xx = _grid(size)
    seeds = rng.uniform(8, 56, (k, 2)).astype(np.float32)
    amp, cells = rng.uniform(5, 14), int(rng.integers(2, 5))
    wy = yy + amp * value_noise(rng, size, cells)
    wx = xx + amp * value_noise(rng, size, cells)
    d = (wy[None] - seeds[:, :1, None]) ** 2 + (wx[None] - seeds[:, 1:, None]) ** 2  # [k, S, S]
    return np.argmin(d, axis=0)


def _bands(rng: np.random.Generator, size: int, k: int, min_frac: float) -> np.ndarray:
    """Wavy, possibly tilted bands whose areas follow a random split -> region map ``[S, S]``."""
    yy, xx = _grid(size)
    a = rng.uniform(-0.6, 0.6) if rng.random() < 0.7 else rng.uniform(0, np.pi)
    t = yy * np.cos(a) + xx * np.sin(a)
    perp = xx * np.cos(a) - yy * np.sin(a)
    t = t + rng.uniform(1, 6) * np.sin(perp * rng.uniform(0.05, 0.2) + rng.uniform(0, 6.3))
    t = t + rng.uniform(1, 5) * value_noise(rng, size, 3)
    floor = min_frac + 0.03
    frac = floor + (1 - k * floor) * rng.dirichlet(np.full(k, 2.0))
    cuts = np.quantile(t, np.cumsum(frac)[:-1])
    return np.searchsorted(cuts, t)


def _blobs(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """``k - 1`` noisy blobs painted in turn over a background region -> region map ``[S, S]``."""
    yy, xx = _grid(size)
    out = np.zeros((size, size), np.int64)
    for r in range(1, k):
        cy, cx = rng.uniform(10, 54, 2)
        rad = rng.uniform(11, 22)
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        field = rad - dist + 0.45 * rad * value_noise(rng, size, 3)
        out[field > 0] = r
    return out


def layout(
    rng: np.random.Generator, size: int, k: int, min_frac: float = 0.06, tries: int = 30
) -> np.ndarray:
    """Region map ``[S, S]`` with values 0..k-1, each region covering at least ``min_frac``."""
    if k == 1:
        return np.zeros((size, size), np.int64)
    for _ in range(tries):
        u = rng.random()
        if u < 0.55:
            reg = _voronoi(rng, size, k)
        elif u < 0.85:
            reg = _bands(rng, size, k, min_frac)
        else:
            reg = _blobs(rng, size, k)
        if np.bincount(reg.ravel(), minlength=k).min() >= min_frac * size * size:
            return reg
    return _bands(rng, size, k, min_frac)  # exact quantile cuts: always valid


# ---------------------------------------------------------------------------- captions
def count_tokens(text: str) -> int:
    """Content tokens of a caption under the open_clip BPE (every world word is one token)."""
    return len(_TOKEN_RE.findall(text.lower()))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _size_word(frac: float) -> str:
    return "large" if frac >= 0.4 else "medium" if frac >= 0.15 else "small"


def make_caption(rng: np.random.Generator, names: list[str], fracs: list[float]) -> str:
    """Caption naming every class in ``names`` (random order, random template, <= 18 tokens).

    Item styles: ``grass``, ``a grass`` or ``a large grass`` (size word from the area fraction);
    the style falls back to the plain name when the caption would be too long.
    """
    order = rng.permutation(len(names))
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    style = int(rng.choice(3, p=[0.5, 0.2, 0.3]))
    for s in range(style, -1, -1):
        items = [
            names[i]
            if s == 0
            else f"a {names[i]}"
            if s == 1
            else f"a {_size_word(fracs[i])} {names[i]}"
            for i in order
        ]
        text = template.format(_join(items))
        if count_tokens(text) <= MAX_CAPTION_TOKENS:
            return text
    raise ValueError(f"caption too long even with plain names: {text!r}")


# ---------------------------------------------------------------------------- scenes
def _num_regions(rng: np.random.Generator) -> int:
    return int(rng.choice([1, 2, 3, 4], p=[0.1, 0.3, 0.35, 0.25]))


def generate_scene(
    rng: np.random.Generator,
    size: int = 64,
    n_regions: int | None = None,
    min_frac: float = 0.06,
    classes: list[int] | None = None,
) -> Scene:
    """One random scene: 1-4 regions (10/30/35/25 %) of distinct classes, hard boundaries."""
    if classes is not None and n_regions is not None and len(classes) != n_regions:
        raise ValueError(f"got {len(classes)} classes for n_regions={n_regions}")
    k = len(classes) if classes else _num_regions(rng) if n_regions is None else int(n_regions)
    if not classes:
        classes = [int(c) for c in rng.choice(len(WORLD_CLASSES), size=k, replace=False)]
    regions = layout(rng, size, k, min_frac)
    img = np.empty((size, size, 3), np.float32)
    for r, c in enumerate(classes):
        m = regions == r
        img[m] = paint(WORLD_CLASSES[c], rng, size)[m]
    jitter = rng.uniform(0.9, 1.08)  # global exposure
    image = np.clip(img * jitter * 255.0 + 0.5, 0, 255).astype(np.uint8)
    label = np.asarray(classes, np.uint8)[regions]
    fracs = [float((regions == r).mean()) for r in range(k)]
    caption = make_caption(rng, [WORLD_CLASSES[c] for c in classes], fracs)
    return Scene(image, label, list(classes), caption)


def caption_from_label(
    rng: np.random.Generator, label: np.ndarray, min_frac: float = 0.04
) -> tuple[str, list[int]]:
    """Caption of a label map ``[H, W]`` (e.g. a zoom crop) and the classes it names.

    A class is named when it covers at least ``min_frac`` of the map (the largest class always).
    """
    counts = np.bincount(label.ravel(), minlength=len(WORLD_CLASSES)) / label.size
    present = [int(c) for c in np.flatnonzero(counts >= min_frac)] or [int(np.argmax(counts))]
    names = [WORLD_CLASSES[c] for c in present]
    return make_caption(rng, names, [float(counts[c]) for c in present]), present


def zoom_crop(
    rng: np.random.Generator, image: np.ndarray, label: np.ndarray, scale: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Random square crop (side ``scale`` x S) resized back to S: bilinear image, nearest label."""
    size = image.shape[0]
    side = max(4, int(round(size * rng.uniform(*scale))))
    y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
    img = Image.fromarray(image[y0 : y0 + side, x0 : x0 + side]).resize(
        (size, size), Image.BILINEAR
    )
    lab = Image.fromarray(label[y0 : y0 + side, x0 : x0 + side]).resize((size, size), Image.NEAREST)
    return np.asarray(img), np.asarray(lab)


def masked_crop(image: np.ndarray, mask: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Mask&crop in uint8, as the frozen-CLIP baseline does it (``merge_subimages``).

    Outside ``mask`` becomes ``fill`` (the normalisation mean), then the tight box around the mask
    is resized (stretched) to ``[S, S, 3]``. The baseline: docs/method.md §2.3.
    """
    size = image.shape[0]
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.where(mask[..., None], image, fill)[y0:y1, x0:x1].astype(np.uint8)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
