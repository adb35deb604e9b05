"""Pictures of segmentations: a fixed palette, colour maps, overlays with a legend, panels.

PIL + numpy only. Colours are a pure function of the class *name*: a stable hash of the
normalised name picks a palette entry, so a class keeps its colour in every run and every
vocabulary (:func:`class_colors`; two classes of one vocabulary never share a colour). Label maps
without names use the palette by index (:func:`colorize`). Ignore pixels (255 / 65535 by default,
any negative value, or values outside ``[0, C)`` when the class names are known) are drawn black.
Text (legends, titles, top-k lists) scales with the picture (:class:`TextStyle`) and uses a
TrueType font (:func:`font_files`), falling back glyph by glyph so any script a font on the machine
covers is drawn. ``proposal_panel`` draws the paper's explanatory figure: per proposal its mask
and the top-5 ``A^c`` classes, frozen CLIP vs MAFT side by side.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maft.data.names import normalize_name

#: Label values drawn black by :func:`colorize` when neither ``ignore_index`` nor ``num_classes``
#: is given (8-bit and 16-bit benchmark ignore values).
DEFAULT_IGNORE = (255, 65535)
PALETTE_SIZE = 1024
IGNORE_COLOR = (0, 0, 0)
TEXT_COLOR = (255, 255, 255)
BACKGROUND = (24, 24, 24)
# Text geometry at the smallest font size (pictures of up to ~440 px); larger pictures scale it.
_LINE = 14  # pixels per legend / text line
_SWATCH = 10
_PAD = 4
_TOPK_WIDTH = 150
MIN_FONT_SIZE = 11
MAX_FONT_SIZE = 96
#: Font size per pixel of the picture's short side (640x480 -> 12 px, 4000x3000 -> 75 px).
FONT_PER_PIXEL = 1 / 40
#: Environment variable naming font files (``os.pathsep``-separated) tried before any other.
FONT_ENV = "MAFT_FONT"
#: TrueType files looked for on the machine, in order (Latin/Greek/Cyrillic first, then CJK).
SYSTEM_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",
    "C:/Windows/Fonts/segoeui.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/AppleSDGothicNeo.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simsun.ttc",
    "C:/Windows/Fonts/malgun.ttf",
)

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
    """RGB palette entry ``index`` (wraps after ``PALETTE_SIZE``); classes: ``class_colors``."""
    r, g, b = palette()[int(index) % PALETTE_SIZE]
    return int(r), int(g), int(b)


def name_slot(name: str) -> int:
    """Palette index a class name hashes to (BLAKE2b of :func:`normalize_name`, stable forever)."""
    digest = hashlib.blake2b(normalize_name(name).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % PALETTE_SIZE


def name_color(name: str) -> tuple[int, int, int]:
    """Colour of ``name`` when no other class of its vocabulary claims the same palette entry."""
    return class_color(name_slot(name))


def _min_distance(num_classes: int) -> float:
    """Smallest RGB distance wanted between two classes of one picture (shrinks with C)."""
    return min(48.0, 0.35 * 255.0 / max(num_classes, 1) ** (1 / 3))


@lru_cache(maxsize=64)
def _class_slots(names: tuple[str, ...]) -> np.ndarray:
    keys = [normalize_name(n) for n in names]
    start = [name_slot(n) for n in names]
    pal = palette().astype(np.int64)
    free = np.ones(PALETTE_SIZE, dtype=bool)
    near = np.full(PALETTE_SIZE, np.iinfo(np.int64).max)  # squared distance to the taken colours
    need = _min_distance(len(names)) ** 2
    slots = np.zeros(len(names), dtype=np.int64)
    for i in sorted(range(len(names)), key=lambda i: (start[i], keys[i], i)):
        probe = (start[i] + np.arange(PALETTE_SIZE)) % PALETTE_SIZE  # linear probing
        ok = free[probe] & (near[probe] >= need)
        if ok.any():
            slot = int(probe[int(np.argmax(ok))])
        else:  # palette crowded: the free entry farthest from the taken colours
            cand = probe[free[probe]]
            slot = int(cand[int(np.argmax(near[cand]))])
        slots[i] = slot
        free[slot] = False
        near = np.minimum(near, ((pal - pal[slot]) ** 2).sum(1))
    return slots


def class_colors(names: Sequence[str]) -> np.ndarray:
    """Colours of a vocabulary's classes, uint8 ``[C, 3]``, fixed per class name.

    Each name starts at its hash slot (:func:`name_slot`) and keeps it unless a class of the same
    vocabulary took it first, or took a colour closer than :func:`_min_distance`; then it probes
    the next entries. Classes are placed in (slot, normalised name) order, so the result does not
    depend on the vocabulary's order, and no two classes share a colour (for C <= PALETTE_SIZE).
    """
    return palette()[_class_slots(tuple(str(n) for n in names))]


def _as_label_map(label_map: Any) -> np.ndarray:
    arr = np.asarray(label_map)
    if arr.ndim != 2:
        raise ValueError(f"label map must be [H, W], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"label map must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


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
    label_map: Any,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Label map int ``[H, W]`` -> uint8 RGB ``[H, W, 3]``; ignore is black.

    With ``names`` classes get their name colours (:func:`class_colors`) and values outside
    ``[0, len(names))`` are ignore; without, the palette is indexed by the label value.
    """
    lab = _as_label_map(label_map)
    if names is not None:
        num_classes = len(names) if num_classes is None else num_classes
        colours = class_colors(names)
        out = colours[np.clip(lab, 0, max(len(colours) - 1, 0))] if len(colours) else None
        if out is None:
            out = np.zeros(lab.shape + (3,), dtype=np.uint8)
    else:
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


# ---------------------------------------------------------------------------------------- text
@dataclass(frozen=True)
class TextStyle:
    """Font size of a picture's text and the line height, swatch and padding derived from it."""

    size: int = MIN_FONT_SIZE

    @classmethod
    def for_image(cls, height: int, width: int) -> TextStyle:
        """Text sized to a picture: ``FONT_PER_PIXEL`` of its short side, clamped to the bounds."""
        size = round(min(int(height), int(width)) * FONT_PER_PIXEL)
        return cls(int(min(max(size, MIN_FONT_SIZE), MAX_FONT_SIZE)))

    @property
    def scale(self) -> float:
        """Size relative to the smallest style."""
        return self.size / MIN_FONT_SIZE

    @property
    def line(self) -> int:
        """Pixels per text line."""
        return round(_LINE * self.scale)

    @property
    def swatch(self) -> int:
        """Side of a legend colour swatch."""
        return round(_SWATCH * self.scale)

    @property
    def pad(self) -> int:
        """Padding around and between text blocks."""
        return max(_PAD, round(_PAD * self.scale))


def _font_candidates() -> list[Path]:
    """``MAFT_FONT`` entries, matplotlib's DejaVuSans when installed, then ``SYSTEM_FONTS``."""
    paths = [Path(p) for p in os.environ.get(FONT_ENV, "").split(os.pathsep) if p.strip()]
    spec = importlib.util.find_spec("matplotlib")  # located, not imported
    for loc in (spec.submodule_search_locations or []) if spec else []:
        paths.append(Path(loc) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    return paths + [Path(p) for p in SYSTEM_FONTS]


_WARNED: set[str] = set()  # keys of the warnings given in this process


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """TrueType files used for text, in glyph-fallback order; empty: Pillow's built-in font.

    Found once per process. With none found, Pillow's built-in font (ASCII only) draws the text
    and a one-time warning says so; set ``MAFT_FONT`` to a ``.ttf``/``.otf``/``.ttc`` file.
    """
    found: list[str] = []
    for path in _font_candidates():
        if str(path) in found or not path.is_file():
            continue
        try:
            ImageFont.truetype(str(path), MIN_FONT_SIZE)
        except OSError:
            continue
        found.append(str(path))
    env = [p for p in os.environ.get(FONT_ENV, "").split(os.pathsep) if p.strip()]
    missing = [p for p in env if p not in found]
    if missing:
        _warn_once("env", f"{FONT_ENV}: cannot load font file(s) {missing}; using other fonts")
    if not found:
        _warn_once(
            "no-font",
            "no TrueType font found: picture text uses Pillow's built-in font, which draws only "
            f"ASCII (other characters show as boxes); set {FONT_ENV}=/path/to/font.ttf",
        )
    return tuple(found)


@lru_cache(maxsize=64)
def _font(index: int, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Font ``index`` of :func:`font_files` at ``size`` px; an index past the end: Pillow's own."""
    files = font_files()
    if index < len(files):
        return ImageFont.truetype(files[index], size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


@lru_cache(maxsize=8192)
def _has_glyph(index: int, char: str) -> bool:
    """Whether font ``index`` draws ``char`` (its mask differs from the missing-glyph box)."""
    if char.isspace():
        return True
    font = _font(index, 16)
    missing = font.getmask("\U0010ffff")  # a noncharacter: every font draws its .notdef box
    mask = font.getmask(char)
    return not (mask.size == missing.size and bytes(mask) == bytes(missing))


def _runs(text: str, size: int) -> list[tuple[str, Any]]:
    """Split ``text`` into runs drawn by one font each (the first font with the glyph)."""
    chain = range(len(font_files()) + 1)  # the TrueType files, then Pillow's built-in font
    runs: list[tuple[str, int]] = []
    lacking = ""
    for ch in text:
        index = next((i for i in chain if _has_glyph(i, ch)), 0)
        if not _has_glyph(index, ch):
            lacking += ch
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0] + ch, index)
        else:
            runs.append((ch, index))
    if lacking:
        chars = "".join(sorted(set(lacking)))
        _warn_once(
            f"glyphs:{chars}",
            f"no available font draws {chars!r} (shown as boxes in pictures); set {FONT_ENV} to "
            "a font that covers it, e.g. Noto Sans CJK for Chinese or Japanese names",
        )
    return [(run, _font(i, size)) for run, i in runs]


def _text_width(text: str, style: TextStyle | None = None) -> int:
    """Width in pixels of ``text`` drawn in ``style``."""
    size = (style or TextStyle()).size
    return int(math.ceil(sum(font.getlength(run) for run, font in _runs(text, size))))


def _draw_text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    style: TextStyle,
    fill: tuple[int, int, int] = TEXT_COLOR,
) -> None:
    """Draw ``text`` with its top-left at ``xy``, switching fonts for glyphs the first lacks."""
    x, y = float(xy[0]), xy[1]
    runs = _runs(text, style.size)
    first = _font(0, style.size)
    baseline = y + (first.getmetrics()[0] if hasattr(first, "getmetrics") else 0)
    for run, font in runs:
        if isinstance(font, ImageFont.FreeTypeFont):
            draw.text((x, baseline), run, fill=fill, font=font, anchor="ls")
        else:
            draw.text((x, y), run, fill=fill, font=font)
        x += font.getlength(run)


# ---------------------------------------------------------------------------------------- legend
def legend_entries(
    label_map: Any, names: Sequence[str], ignore_index: int | None = None
) -> list[tuple[int, str, tuple[int, int, int]]]:
    """``(class index, name, colour)`` of each class present, largest area first (ties: index)."""
    lab = _as_label_map(label_map)
    keep = ~ignore_mask(lab, ignore_index, len(names))
    counts = np.bincount(lab[keep], minlength=len(names))  # kept values lie in [0, C)
    ids = np.flatnonzero(counts)
    order = sorted(zip(ids.tolist(), counts[ids].tolist()), key=lambda t: (-t[1], t[0]))
    colours = class_colors(names)
    return [(i, str(names[i]), tuple(int(v) for v in colours[i])) for i, _ in order]


def draw_legend(
    entries: Sequence[tuple[int, str, tuple[int, int, int]]],
    height: int,
    style: TextStyle | None = None,
) -> Image.Image:
    """A legend image: swatch + name per entry, in columns no taller than ``height`` if possible.

    ``style`` defaults to text sized for a square picture of side ``height``.
    """
    st = style or TextStyle.for_image(height, height)
    pad, line, swatch = st.pad, st.line, st.swatch
    if not entries:
        entries = [(-1, "(no class)", IGNORE_COLOR)]
    rows = max(1, (height - 2 * pad) // line, -(-len(entries) // 6))  # at most 6 columns
    cols = [entries[i : i + rows] for i in range(0, len(entries), rows)]
    col_w = [swatch + 2 * pad + max(_text_width(e[1], st) for e in c) + pad for c in cols]
    h = max(height, 2 * pad + rows * line)
    im = Image.new("RGB", (sum(col_w) + pad, h), BACKGROUND)
    draw = ImageDraw.Draw(im)
    x = pad
    top = (line - swatch) // 2
    for col, w in zip(cols, col_w):
        for r, (_, name, colour) in enumerate(col):
            y = pad + r * line
            draw.rectangle(
                [x, y + top, x + swatch, y + top + swatch],
                fill=colour,
                outline=TEXT_COLOR,
                width=max(1, round(st.scale)),
            )
            _draw_text(draw, (x + swatch + pad, y), name, st)
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


def _titled(im: Image.Image, title: str, style: TextStyle | None = None) -> Image.Image:
    st = style or TextStyle()
    width = max(im.width, _text_width(title, st) + 2 * st.pad)
    bar = Image.new("RGB", (width, st.line + st.pad), BACKGROUND)
    _draw_text(ImageDraw.Draw(bar), (st.pad, st.pad // 2), title, st)
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

    Values outside ``[0, len(names))`` and ``ignore_index`` count as ignore. The legend's text is
    sized to the image (:class:`TextStyle`). With ``return_legend=True`` also returns the legend
    entries ``(index, name, colour)``.
    """
    img = to_rgb_array(image)
    lab = _as_label_map(label_map)
    _check_same_size(img, lab)
    ign = ignore_mask(lab, ignore_index, len(names))
    colours = colorize(lab, ignore_index, len(names), names=names).astype(np.float32)
    blended = img.astype(np.float32) * (1.0 - alpha) + colours * alpha  # [H, W, 3]
    out = np.where(ign[..., None], img, np.rint(blended).astype(np.uint8))
    picture = Image.fromarray(out.astype(np.uint8), "RGB")
    entries = legend_entries(lab, names, ignore_index)
    if legend:
        style = TextStyle.for_image(*img.shape[:2])
        picture = _hstack([picture, draw_legend(entries, picture.height, style)], style.pad)
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
    st = TextStyle.for_image(*img.shape[:2])
    p = _as_label_map(pred)
    _check_same_size(img, p, "prediction")
    tiles = [_titled(Image.fromarray(img, "RGB"), titles[0], st)]
    both = [p]
    if gt is not None:
        g = _as_label_map(gt)
        _check_same_size(img, g, "ground truth")
        gt_colours = colorize(g, ignore_index, len(names), names=names)
        tiles.append(_titled(Image.fromarray(gt_colours), titles[1], st))
        both.insert(0, g)
    pred_colours = colorize(p, ignore_index, len(names), names=names)
    tiles.append(_titled(Image.fromarray(pred_colours), titles[2], st))
    stacked = np.concatenate([b.reshape(1, -1) for b in both], axis=1)  # [1, sum(H*W)]
    entries = legend_entries(stacked, names, ignore_index)
    return _hstack(tiles + [draw_legend(entries, tiles[0].height, st)], st.pad)


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


def _topk_tile(topk: TopK, height: int, style: TextStyle | None = None) -> Image.Image:
    """Top-k ``(name, probability)`` lines with a bar proportional to the probability."""
    st = style or TextStyle()
    pad, line = st.pad, st.line
    texts = [f"{n} {float(p):.2f}" for n, p in topk]
    text_w = max((_text_width(t, st) for t in texts), default=0)
    width = max(round(_TOPK_WIDTH * st.scale), 2 * pad + text_w + 2)
    im = Image.new("RGB", (width, max(height, 2 * pad + len(topk) * line)), BACKGROUND)
    draw = ImageDraw.Draw(im)
    for r, ((_, prob), text) in enumerate(zip(topk, texts)):
        y = pad + r * line
        bar = int(round(float(prob) * (width - 2 * pad)))
        draw.rectangle([pad, y + 1, pad + max(bar, 1), y + line - 1], fill=(70, 90, 140))
        _draw_text(draw, (pad + 2, y), text, st)
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
    st = TextStyle.for_image(*img.shape[:2])
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
            [
                tile,
                _topk_tile(topk_frozen[k], tile.height, st),
                _topk_tile(topk_maft[k], tile.height, st),
            ]
        )
    if not rows:
        return _titled(Image.fromarray(img, "RGB"), "no proposals", st)
    return _grid(rows, titles, st)


def _grid(
    rows: Sequence[Sequence[Image.Image]], titles: Sequence[str], style: TextStyle | None = None
) -> Image.Image:
    """Rows of cells in aligned columns under a header of column titles."""
    st = style or TextStyle()
    pad = st.pad
    widths = [
        max(max(r[c].width for r in rows), _text_width(titles[c], st) + 2 * pad)
        for c in range(len(titles))
    ]
    header = Image.new("RGB", (sum(widths) + pad * (len(widths) - 1), st.line + pad), BACKGROUND)
    draw = ImageDraw.Draw(header)
    x = 0
    for w, t in zip(widths, titles):
        _draw_text(draw, (x + pad, pad // 2), t, st)
        x += w + pad
    lines = [header]
    for r in rows:
        cells = []
        for w, cell in zip(widths, r):
            padded = Image.new("RGB", (w, cell.height), BACKGROUND)
            padded.paste(cell, (0, 0))
            cells.append(padded)
        lines.append(_hstack(cells, pad))
    return _vstack(lines, pad)


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
    "TextStyle",
    "class_color",
    "class_colors",
    "colorize",
    "draw_legend",
    "font_files",
    "ignore_mask",
    "legend_entries",
    "name_color",
    "name_slot",
    "overlay",
    "palette",
    "panel",
    "proposal_panel",
    "save_png",
    "to_rgb_array",
    "write_label_png",
]
