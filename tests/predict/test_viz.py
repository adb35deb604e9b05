"""maft.viz: palette, colorize, overlay + legend, panels, proposal panel, PNG round trips."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from maft import viz

NAMES = ["sky", "grass", "tree", "road", "person"]
#: sha256 of the palette bytes: pins the colours across runs and versions.
PALETTE_SHA256 = "633fc3808b7f210d65a3b1d2943b5e8d22bb5b8aa970868a00f4eaf9df5d627d"


@pytest.fixture
def labels() -> np.ndarray:
    """A 30x96 label map with classes 0, 2, 4 and ignore (255) in known rectangles."""
    lab = np.zeros((30, 96), dtype=np.int64)
    lab[:, 40:70] = 2
    lab[10:20, 70:] = 4
    lab[:5, :10] = 255
    return lab


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(30, 96, 3), dtype=np.uint8)


def test_palette_is_distinct_fixed_and_never_black():
    pal = viz.palette()
    assert pal.dtype == np.uint8 and pal.shape == (viz.PALETTE_SIZE, 3)
    assert len({tuple(c) for c in pal.tolist()}) == viz.PALETTE_SIZE  # all distinct (>= 256)
    assert pal.astype(int).sum(1).min() >= 150  # far from the black of ignore
    # pinned values: the same colours in every run and every process
    assert pal[:3].tolist() == [[238, 17, 68], [0, 255, 255], [0, 153, 0]]
    assert hashlib.sha256(pal.tobytes()).hexdigest() == PALETTE_SHA256


def test_colorize_matches_palette_lookup_and_blacks_out_ignore(labels):
    out = viz.colorize(labels)
    assert out.shape == (30, 96, 3) and out.dtype == np.uint8
    pal = viz.palette()
    for y, x in [(20, 0), (0, 50), (15, 80)]:
        assert tuple(out[y, x]) == tuple(pal[labels[y, x]])
    assert (out[:5, :10] == 0).all()
    big = np.array([[0, 65535, -1, 300]])
    col = viz.colorize(big)
    assert (col[0, 1] == 0).all() and (col[0, 2] == 0).all()
    assert tuple(col[0, 3]) == tuple(pal[300])  # 300 is a class (ADE-847), not ignore
    # with names known, values >= C are ignore while 255 may be a real class
    col = viz.colorize(np.array([[255, 900]]), num_classes=847)
    assert tuple(col[0, 0]) == tuple(pal[255]) and (col[0, 1] == 0).all()


def test_colorize_rejects_bad_input():
    with pytest.raises(ValueError, match="H, W"):
        viz.colorize(np.zeros((2, 3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        viz.colorize(np.zeros((2, 3), dtype=np.float32))


def test_legend_lists_exactly_the_classes_present(labels, image):
    entries = viz.legend_entries(labels, NAMES)
    # independent count: class -> pixels, ignore excluded, largest first
    counts = {c: int((labels == c).sum()) for c in range(len(NAMES)) if (labels == c).any()}
    expected = sorted(counts, key=lambda c: (-counts[c], c))
    assert [e[0] for e in entries] == expected == [0, 2, 4]
    assert [e[1] for e in entries] == ["sky", "tree", "person"]
    assert all(e[2] == viz.class_color(e[0]) for e in entries)
    pic, legend = viz.overlay(image, labels, NAMES, return_legend=True)
    assert legend == entries
    assert {e[1] for e in legend} == {NAMES[c] for c in np.unique(labels) if c < len(NAMES)}
    # an ignore_index that is otherwise a class drops it from the legend
    assert [e[0] for e in viz.legend_entries(labels, NAMES, ignore_index=4)] == [0, 2]


def test_overlay_blends_pixels_and_keeps_ignore(labels, image):
    pic = viz.overlay(image, labels, NAMES, alpha=0.5)
    assert isinstance(pic, Image.Image) and pic.mode == "RGB"
    assert pic.height >= 30 and pic.width > 96  # legend on the right
    arr = np.asarray(pic)
    y, x = 15, 80  # class 4
    want = np.rint(0.5 * image[y, x].astype(np.float64) + 0.5 * viz.palette()[4]).astype(int)
    assert np.abs(arr[y, x].astype(int) - want).max() <= 1
    assert (arr[:5, :10] == image[:5, :10]).all()  # ignore pixels untouched
    no_legend = viz.overlay(Image.fromarray(image), labels, NAMES, legend=False)
    assert no_legend.size == (96, 30)
    assert (np.asarray(no_legend) == arr[:30, :96]).all()  # PIL input == array input


def test_overlay_checks_sizes(image):
    with pytest.raises(ValueError, match="differ in size"):
        viz.overlay(image, np.zeros((10, 10), dtype=np.int64), NAMES)


def test_pictures_are_byte_identical_across_calls(labels, image):
    a = viz.overlay(image, labels, NAMES).tobytes()
    b = viz.overlay(image.copy(), labels.copy(), list(NAMES)).tobytes()
    assert a == b
    assert (
        viz.panel(image, labels, labels, NAMES).tobytes()
        == viz.panel(image, labels, labels, NAMES).tobytes()
    )


def test_panel_holds_image_gt_and_prediction_tiles(labels, image):
    pred = labels.copy()
    pred[:5, :10] = 1  # a prediction has no ignore
    pic = viz.panel(image, labels, pred, NAMES)
    assert pic.mode == "RGB"
    arr = np.asarray(pic)
    title, gap, w = viz._LINE + viz._PAD, viz._PAD, 96
    assert arr.shape[0] >= 30 + title and arr.shape[1] > 3 * w + 2 * gap
    assert (arr[title : title + 30, :w] == image).all()
    gt_tile = arr[title : title + 30, w + gap : 2 * w + gap]
    pred_tile = arr[title : title + 30, 2 * (w + gap) : 3 * w + 2 * gap]
    assert (gt_tile == viz.colorize(labels, num_classes=5)).all()
    assert (pred_tile == viz.colorize(pred, num_classes=5)).all()
    no_gt = viz.panel(image, None, pred, NAMES)
    assert no_gt.width < pic.width


def test_proposal_panel_shape_and_errors(image):
    masks = np.zeros((3, 15, 48), dtype=np.float32)  # another size: resized to the image
    masks[0, :8] = 1
    masks[1, :, :20] = 0.7
    top = [[("sky", 0.6), ("tree", 0.3)], [("road", 0.9)], []]
    pic = viz.proposal_panel(image, masks, top, top)
    assert isinstance(pic, Image.Image) and pic.mode == "RGB"
    assert pic.height >= 3 * 30 + viz._LINE and pic.width > 96 + 2 * 150
    arr = np.asarray(pic)
    title = viz._LINE + viz._PAD
    tile = arr[title : title + 30, :96].astype(int)
    assert tile[20:, :].mean() < image[20:, :].mean()  # outside the mask: dimmed
    with pytest.raises(ValueError, match="masks"):
        viz.proposal_panel(image, masks, top[:2], top)
    empty = viz.proposal_panel(image, np.zeros((0, 30, 96)), [], [])
    assert empty.width >= 96


def test_written_pngs_open_with_pil(tmp_path, labels, image):
    pics = {
        "overlay": viz.overlay(image, labels, NAMES),
        "panel": viz.panel(image, labels, labels, NAMES),
        "proposals": viz.proposal_panel(image, (labels[None] == 2), [[("tree", 1.0)]], [[]]),
        "colour": viz.colorize(labels),
    }
    for name, pic in pics.items():
        path = tmp_path / "sub" / f"{name}.png"
        viz.save_png(pic, path)
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert (np.asarray(im) == np.asarray(pic)).all()
