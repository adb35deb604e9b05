"""Pictures of segmentations: a fixed palette, colour maps, overlays with a legend, panels.

PIL + numpy only. The palette is a pure function of the class index (no random state), so the same
label map gives byte-identical pictures in every run. Ignore pixels (255 / 65535 by default, any
negative value, or values outside ``[0, C)`` when the class names are known) are drawn black.
``proposal_panel`` draws the paper's explanatory figure: per proposal its mask and the top-5
``A^c`` classes, frozen CLIP vs MAFT side by side (spec §b, §c).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Label values drawn black by :func:`colorize` when neither ``ignore_index`` nor ``num_classes``
#: is given (8-bit and 16-bit benchmark ignore values).
DEFAULT_IGNORE = (255, 65535)
PALETTE_SIZE = 1024
IGNORE_COLOR = (0, 0, 0)
TEXT_COLOR = (255, 255, 255)
BACKGROUND = (24, 24, 24)
_LINE = 14  # pixels per legend / text line with PIL's default font
_SWATCH = 10
_PAD = 4

TopK = Sequence[tuple[str, float]]


# ---------------------------------------------------------------------------------------- colours
@lru_cache(maxsize=1)
def palette() -> np.ndarray:
    """The fixed palette: uint8 ``[PALETTE_SIZE, 3]``, pairwise distinct, none close to black.

    Greedy farthest-point sampling over a 16-level RGB grid (deterministic: ties go to the first
    candidate), so early classes get the most distinct colours.
    """
    levels = np.arange(16) * 17  # 0, 17, ..., 255
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[grid.sum(1) >= 150].astype(np.int64)  # [G, 3], keep black for ignore
    first = int(np.argmin(np.abs(grid - np.array([230, 25, 75])).sum(1)))
    chosen = [first]
    dist = ((grid - grid[first]) ** 2).sum(1)  # [G] squared distance to the chosen set
    for _ in range(PALETTE_SIZE - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((grid - grid[nxt]) ** 2).sum(1))
    return grid[chosen].astype(np.uint8)


def class_color(index: int) -> tuple[int, int, int]:
    """RGB colour of class ``index`` (the palette wraps after ``PALETTE_SIZE`` classes)."""
    r, g, b = palette()[int(index) % PALETTE_SIZE]
    return int(r), int(g), int(b)


def _as_label_map(label_map: Any) -> np.ndarray:
    arr = np.asarray(label_map)
    if arr.ndim != 2:
        raise ValueError(f"label map must be [H, W], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"label map must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def ignore_mask(
    label_map: Any, ignore_index: int | None = None, num_classes: int | None = None
) -> np.ndarray:
    """Bool ``[H, W]`` of pixels drawn as ignore (see the module docstring for the rule)."""
    lab = _as_label_map(label_map)
    mask = lab < 0
    if num_classes is not None:
        mask |= lab >= num_classes
    if ignore_index is not None:
        mask |= lab == int(ignore_index)
    if num_classes is None and ignore_index is None:
        mask |= np.isin(lab, DEFAULT_IGNORE)
    return mask


def colorize(
    label_map: Any, ignore_index: int | None = None, num_classes: int | None = None
) -> np.ndarray:
    """Label map int ``[H, W]`` -> uint8 RGB ``[H, W, 3]`` in the fixed palette; ignore is black."""
    lab = _as_label_map(label_map)
    out = palette()[np.mod(lab, PALETTE_SIZE)]  # [H, W, 3]
    out[ignore_mask(lab, ignore_index, num_classes)] = IGNORE_COLOR
    return out


# ---------------------------------------------------------------------------------------- images
def to_rgb_array(image: Any) -> np.ndarray:
    """PIL image, uint8 ``[H, W, 3]`` or ``[3, H, W]`` array/tensor -> uint8 ``[H, W, 3]``."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # [H, W, 3]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [H, W, 3] or [3, H, W], got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _check_same_size(image: np.ndarray, label_map: np.ndarray, what: str = "label map") -> None:
    if image.shape[:2] != label_map.shape:
        raise ValueError(
            f"{what} {label_map.shape} and image {image.shape[:2]} differ in size; resize the "
            "prediction to the original image first"
        )


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_width(text: str) -> int:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=_font())
    return int(box[2] - box[0])


# ---------------------------------------------------------------------------------------- legend
def legend_entries(
    label_map: Any, names: Sequence[str], ignore_index: int | None = None
) -> list[tuple[int, str, tuple[int, int, int]]]:
    """``(class index, name, colour)`` of each class present, largest area first (ties: index)."""
    lab = _as_label_map(label_map)
    keep = ~ignore_mask(lab, ignore_index, len(names))
    ids, counts = np.unique(lab[keep], return_counts=True)
    order = sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0]))
    return [(i, str(names[i]), class_color(i)) for i, _ in order]


def draw_legend(
    entries: Sequence[tuple[int, str, tuple[int, int, int]]], height: int
) -> Image.Image:
    """A legend image: swatch + name per entry, in columns no taller than ``height`` if possible."""
    if not entries:
        entries = [(-1, "(no class)", IGNORE_COLOR)]
    rows = max(1, (height - 2 * _PAD) // _LINE, -(-len(entries) // 6))  # at most 6 columns
    cols = [entries[i : i + rows] for i in range(0, len(entries), rows)]
    col_w = [_SWATCH + 2 * _PAD + max(_text_width(e[1]) for e in c) + _PAD for c in cols]
    h = max(height, 2 * _PAD + rows * _LINE)
    im = Image.new("RGB", (sum(col_w) + _PAD, h), BACKGROUND)
    draw = ImageDraw.Draw(im)
    x = _PAD
    for col, w in zip(cols, col_w):
        for r, (_, name, colour) in enumerate(col):
            y = _PAD + r * _LINE
            draw.rectangle(
                [x, y + 2, x + _SWATCH, y + 2 + _SWATCH], fill=colour, outline=TEXT_COLOR
            )
            draw.text((x + _SWATCH + _PAD, y), name, fill=TEXT_COLOR, font=_font())
        x += w
    return im


def _hstack(images: Sequence[Image.Image], gap: int = _PAD) -> Image.Image:
    h = max(im.height for im in images)
    w = sum(im.width for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (w, h), BACKGROUND)
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


def _vstack(images: Sequence[Image.Image], gap: int = _PAD) -> Image.Image:
    w = max(im.width for im in images)
    h = sum(im.height for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (w, h), BACKGROUND)
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + gap
    return out


def _titled(im: Image.Image, title: str) -> Image.Image:
    bar = Image.new("RGB", (max(im.width, _text_width(title) + 2 * _PAD), _LINE + _PAD), BACKGROUND)
    ImageDraw.Draw(bar).text((_PAD, 2), title, fill=TEXT_COLOR, font=_font())
    return _vstack([bar, im], gap=0)


# ---------------------------------------------------------------------------------------- pictures
def overlay(
    image: Any,
    label_map: Any,
    names: Sequence[str],
    alpha: float = 0.5,
    ignore_index: int | None = None,
    legend: bool = True,
    return_legend: bool = False,
) -> Image.Image | tuple[Image.Image, list[tuple[int, str, tuple[int, int, int]]]]:
    """Blend the class colours over ``image`` (ignore pixels untouched) with a legend on the right.

    Values outside ``[0, len(names))`` and ``ignore_index`` count as ignore. With
    ``return_legend=True`` also returns the legend entries ``(index, name, colour)``.
    """
    img = to_rgb_array(image)
    lab = _as_label_map(label_map)
    _check_same_size(img, lab)
    ign = ignore_mask(lab, ignore_index, len(names))
    colours = colorize(lab, ignore_index, len(names)).astype(np.float32)
    blended = img.astype(np.float32) * (1.0 - alpha) + colours * alpha  # [H, W, 3]
    out = np.where(ign[..., None], img, np.rint(blended).astype(np.uint8))
    picture = Image.fromarray(out.astype(np.uint8), "RGB")
    entries = legend_entries(lab, names, ignore_index)
    if legend:
        picture = _hstack([picture, draw_legend(entries, picture.height)])
    return (picture, entries) if return_legend else picture


def panel(
    image: Any,
    gt: Any | None,
    pred: Any,
    names: Sequence[str],
    ignore_index: int | None = None,
    titles: Sequence[str] = ("image", "ground truth", "prediction"),
) -> Image.Image:
    """``image | ground truth | prediction`` side by side with titles and one legend (GT ∪ pred)."""
    img = to_rgb_array(image)
    p = _as_label_map(pred)
    _check_same_size(img, p, "prediction")
    tiles = [_titled(Image.fromarray(img, "RGB"), titles[0])]
    both = [p]
    if gt is not None:
        g = _as_label_map(gt)
        _check_same_size(img, g, "ground truth")
        tiles.append(_titled(Image.fromarray(colorize(g, ignore_index, len(names))), titles[1]))
        both.insert(0, g)
    tiles.append(_titled(Image.fromarray(colorize(p, ignore_index, len(names))), titles[2]))
    stacked = np.concatenate([b.reshape(1, -1) for b in both], axis=1)  # [1, sum(H*W)]
    entries = legend_entries(stacked, names, ignore_index)
    return _hstack(tiles + [draw_legend(entries, tiles[0].height)])


def _mask_tile(img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """The image dimmed outside a soft mask and tinted inside it."""
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != img.shape[:2]:
        m_im = Image.fromarray(m.astype(np.float32), "F")
        m = np.asarray(m_im.resize((img.shape[1], img.shape[0]), Image.BILINEAR))
    m = np.clip(m, 0.0, 1.0)[..., None]  # [H, W, 1]
    base = img.astype(np.float32) * (0.25 + 0.75 * m)
    tinted = base * (1 - 0.35 * m) + np.array(colour, np.float32) * 0.35 * m
    return Image.fromarray(np.clip(np.rint(tinted), 0, 255).astype(np.uint8), "RGB")


def _topk_tile(topk: TopK, height: int, width: int = 150) -> Image.Image:
    """Top-k ``(name, probability)`` lines with a bar proportional to the probability."""
    width = max(width, 2 * _PAD + max((_text_width(f"{n} {p:.2f}") for n, p in topk), default=0))
    im = Image.new("RGB", (width, max(height, 2 * _PAD + len(topk) * _LINE)), BACKGROUND)
    draw = ImageDraw.Draw(im)
    for r, (name, prob) in enumerate(topk):
        y = _PAD + r * _LINE
        bar = int(round(float(prob) * (width - 2 * _PAD)))
        draw.rectangle([_PAD, y + 1, _PAD + max(bar, 1), y + _LINE - 1], fill=(70, 90, 140))
        draw.text((_PAD + 2, y), f"{name} {float(prob):.2f}", fill=TEXT_COLOR, font=_font())
    return im


def proposal_panel(
    image: Any,
    masks: Any,
    topk_frozen: Sequence[TopK],
    topk_maft: Sequence[TopK],
    titles: Sequence[str] = ("proposal", "frozen CLIP", "MAFT"),
) -> Image.Image:
    """Per proposal (one row): its mask, then top-k ``A^c`` classes of frozen CLIP and of MAFT.

    Args:
        image: the picture the proposals belong to (uint8 ``[H, W, 3]``, ``[3, H, W]`` or PIL).
        masks: ``[K, h, w]`` soft or binary masks in [0, 1] (resized to the image when needed).
        topk_frozen / topk_maft: per proposal a list of ``(class name, probability)``.
    """
    img = to_rgb_array(image)
    m = np.asarray(masks.detach().cpu() if hasattr(masks, "detach") else masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {m.shape}")
    if not (len(m) == len(topk_frozen) == len(topk_maft)):
        raise ValueError(
            f"{len(m)} masks but {len(topk_frozen)} frozen and {len(topk_maft)} MAFT top-k lists"
        )
    rows = []
    for k in range(len(m)):
        tile = _mask_tile(img, m[k], class_color(k))
        rows.append(
            [tile, _topk_tile(topk_frozen[k], tile.height), _topk_tile(topk_maft[k], tile.height)]
        )
    if not rows:
        return _titled(Image.fromarray(img, "RGB"), "no proposals")
    return _grid(rows, titles)


def _grid(rows: Sequence[Sequence[Image.Image]], titles: Sequence[str]) -> Image.Image:
    """Rows of cells in aligned columns under a header of column titles."""
    widths = [
        max(max(r[c].width for r in rows), _text_width(titles[c]) + 2 * _PAD)
        for c in range(len(titles))
    ]
    header = Image.new("RGB", (sum(widths) + _PAD * (len(widths) - 1), _LINE + _PAD), BACKGROUND)
    draw = ImageDraw.Draw(header)
    x = 0
    for w, t in zip(widths, titles):
        draw.text((x + _PAD, 2), t, fill=TEXT_COLOR, font=_font())
        x += w + _PAD
    lines = [header]
    for r in rows:
        cells = []
        for w, cell in zip(widths, r):
            padded = Image.new("RGB", (w, cell.height), BACKGROUND)
            padded.paste(cell, (0, 0))
            cells.append(padded)
        lines.append(_hstack(cells))
    return _vstack(lines)


def save_png(picture: Image.Image | np.ndarray, path: Any) -> None:
    """Write a picture (PIL or uint8 array) as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture))
    im.save(path, format="PNG")


def write_label_png(label_map: Any, num_classes: int, path: str | Path) -> None:
    """Label PNG of class indices: 8-bit when ``num_classes < 255``, else 16-bit."""
    arr = np.asarray(label_map.cpu() if hasattr(label_map, "cpu") else label_map)
    dtype = np.uint8 if num_classes < 255 else np.uint16
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(dtype)).save(path, format="PNG")


__all__ = [
    "DEFAULT_IGNORE",
    "class_color",
    "colorize",
    "draw_legend",
    "ignore_mask",
    "legend_entries",
    "overlay",
    "palette",
    "panel",
    "proposal_panel",
    "save_png",
    "to_rgb_array",
    "write_label_png",
]
