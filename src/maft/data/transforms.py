"""Train / test augmentations of docs/method.md §6.2 and §4.4, built with albumentations.

Train: ResizeShortestEdge (short side drawn from ``short_sides``, long side <= ``max_long_side``),
the ColorAugSSD photometric jitter of detectron2's PointRend, horizontal flip, random crop of
``crop_size`` padded bottom/right to the crop size (image 128, label ignore). detectron2 crops
before jitter and flip; both are pixel-wise / mirror-symmetric, so the result has the same
distribution, and padding after them keeps the pad bottom/right with the exact pad values.
Test: ResizeShortestEdge to one short side. Images resize bilinearly and labels
nearest-neighbour with PIL (as detectron2's ``ResizeTransform``), so no new label value appears.
Call a transform as
``t(image=uint8 [H, W, 3], mask=int32 [H, W])`` -> ``{"image": ..., "mask": ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image

#: detectron2 / MAFT training scales: 320, 384, ..., 960 (§6.2).
DEFAULT_SHORT_SIDES = tuple(range(320, 961, 64))


def shortest_edge_size(h: int, w: int, short: int, max_long: int) -> tuple[int, int]:
    """Output ``(h, w)`` of detectron2's ResizeShortestEdge for one short-side target."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_long:
        rescale = max_long / max(newh, neww)
        newh, neww = newh * rescale, neww * rescale
    return int(newh + 0.5), int(neww + 0.5)


class ResizeShortestEdge(A.DualTransform):
    """Resize so the short side is one of ``short_sides`` (uniform choice), long side capped."""

    def __init__(
        self,
        short_sides: Sequence[int],
        max_long_side: int = 2560,
        resize_mask: bool = True,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.short_sides = [int(s) for s in short_sides]
        self.max_long_side = int(max_long_side)
        self.resize_mask = bool(resize_mask)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """Draw the short side and compute the output size from the input shape."""
        h, w = params["shape"][:2]
        short = self.py_random.choice(self.short_sides)
        return {"size": shortest_edge_size(h, w, short, self.max_long_side)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        """Bilinear resize of a uint8 image."""
        if img.shape[:2] == size:
            return img
        return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        """Nearest-neighbour resize of an integer label map (PIL mode ``I``)."""
        if mask.shape[:2] == size or not self.resize_mask:
            return mask
        im = Image.fromarray(mask.astype(np.int32))  # mode "I"
        return np.asarray(im.resize((size[1], size[0]), Image.NEAREST), dtype=np.int32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments albumentations serialises."""
        return ("short_sides", "max_long_side", "resize_mask")


def _convert(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``clip(x * alpha + beta, 0, 255)`` truncated to uint8, as in ColorAugSSD."""
    return np.clip(channel.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class ColorAugSSD(A.ImageOnlyTransform):
    """detectron2 PointRend ColorAugSSD on RGB uint8: brightness, contrast, saturation, hue.

    Each op fires with probability 0.5; contrast runs first or last with probability 0.5.
    Saturation and hue work in OpenCV HSV (hue on the 0-179 scale).
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def get_params(self) -> dict[str, Any]:
        """Draw which ops fire and their magnitudes."""
        r = self.py_random
        coin = lambda: r.random() < 0.5  # noqa: E731
        return {
            "beta": r.uniform(-self.brightness_delta, self.brightness_delta) if coin() else None,
            "contrast_first": coin(),
            "alpha": r.uniform(*self.contrast_range) if coin() else None,
            "sat": r.uniform(*self.saturation_range) if coin() else None,
            "hue": r.randint(-self.hue_delta, self.hue_delta) if coin() else None,
        }

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        """Apply the drawn ops in ColorAugSSD order."""
        if params["beta"] is not None:
            img = _convert(img, beta=params["beta"])
        alpha = params["alpha"]
        contrast = (lambda x: _convert(x, alpha=alpha)) if alpha is not None else None
        if contrast and params["contrast_first"]:
            img = contrast(img)
        img = self._hsv(img, params["sat"], params["hue"])
        if contrast and not params["contrast_first"]:
            img = contrast(img)
        return img

    @staticmethod
    def _hsv(img: np.ndarray, sat: float | None, hue: int | None) -> np.ndarray:
        if sat is not None:  # own HSV round trip, as the reference does per op
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=sat)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + hue) % 180).astype(np.uint8)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments albumentations serialises."""
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def build_train_transform(
    short_sides: Sequence[int] = DEFAULT_SHORT_SIDES,
    max_long_side: int = 2560,
    crop_size: int | Sequence[int] = 640,
    color_jitter: bool = True,
    hflip: bool = True,
    image_pad_value: int = 128,
    ignore_index: int = 255,
    seed: int | None = None,
) -> A.Compose:
    """Training augmentation of §6.2; output is exactly ``crop_size``."""
    ch, cw = _pair(crop_size)
    # Pixel-wise jitter and flip commute with cropping, so they run first; the crop then pads
    # bottom/right up to the crop size (image 128, label ignore), as detectron2's crop + pad.
    ops: list[A.BasicTransform] = [ResizeShortestEdge(short_sides, max_long_side)]
    if color_jitter:
        ops.append(ColorAugSSD())
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops.append(
        A.RandomCrop(
            ch,
            cw,
            pad_if_needed=True,
            pad_position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=image_pad_value,
            fill_mask=ignore_index,
        )
    )
    return A.Compose(ops, seed=seed)


def build_test_transform(
    short_side: int = 640, max_long_side: int = 2560, resize_label: bool = False
) -> A.Compose:
    """Test-time resize of §4.4 (short side 640, long side <= 2560); no padding.

    The label keeps its original size by default: predictions are resized back to the original
    image (§4.4) and scored against the label as stored on disk, as detectron2's evaluator does.
    """
    return A.Compose([ResizeShortestEdge([short_side], max_long_side, resize_mask=resize_label)])
