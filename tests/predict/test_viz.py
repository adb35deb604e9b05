"""maft.viz: palette, colorize, overlay + legend, panels, proposal panel, PNG round trips."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

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
    colours = viz.class_colors(NAMES)  # colours follow the class names, not their positions
    assert all(e[2] == tuple(colours[e[0]]) for e in entries)
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
    colour = viz.class_colors(NAMES)[4]
    want = np.rint(0.5 * image[y, x].astype(np.float64) + 0.5 * colour).astype(int)
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
    assert (gt_tile == viz.colorize(labels, names=NAMES)).all()
    assert (pred_tile == viz.colorize(pred, names=NAMES)).all()
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


# ------------------------------------------------------------------ text sized to the picture
def _text_height(pic: Image.Image, image_width: int) -> int:
    """Rows spanned by the white text and swatch border of a one-entry legend."""
    legend = np.asarray(pic)[:, image_width:]
    rows = np.flatnonzero((legend == 255).all(-1).any(1))
    return int(rows.max() - rows.min() + 1)


def test_text_style_scales_with_the_image_within_bounds():
    sizes = [(30, 96), (480, 640), (3000, 4000), (90000, 90000)]
    small, vga, photo, huge = (viz.TextStyle.for_image(*hw) for hw in sizes)
    assert small.size == viz.MIN_FONT_SIZE and (small.line, small.pad) == (viz._LINE, viz._PAD)
    assert vga.size == 12 and photo.size == 75 and huge.size == viz.MAX_FONT_SIZE
    assert photo.line > 5 * small.line and photo.swatch > 5 * small.swatch


def test_legend_of_a_large_overlay_is_readable():
    one = ["sky"]
    small = viz.overlay(np.zeros((30, 40, 3), np.uint8), np.zeros((30, 40), np.int64), one)
    big = viz.overlay(np.zeros((960, 1280, 3), np.uint8), np.zeros((960, 1280), np.int64), one)
    assert viz.TextStyle.for_image(960, 1280).size == 24
    # a fixed-size legend would be as tall on the 1280x960 picture as on the 40x30 one
    assert _text_height(big, 1280) >= 2 * _text_height(small, 40)
    assert big.width - 1280 >= 2 * (small.width - 40)


# ------------------------------------------------------------------ fonts
@pytest.fixture
def fresh_fonts(monkeypatch):
    """Forget the fonts found so far (and the warnings given); forget them again afterwards."""

    def clear() -> None:
        viz.font_files.cache_clear()
        viz._font.cache_clear()
        viz._has_glyph.cache_clear()
        viz._WARNED.clear()

    clear()
    yield monkeypatch
    clear()


def test_non_ascii_names_are_drawn_not_as_boxes(fresh_fonts):
    if not viz.font_files() or not viz._has_glyph(0, "ß"):
        pytest.skip("no TrueType font with 'ß' on this machine")
    entries = [(0, "Straße кошка", (200, 0, 0))]
    missing = [
        (0, "Stra\U0010ffffe \U0010ffff\U0010ffff\U0010ffff\U0010ffff\U0010ffff", (200, 0, 0))
    ]
    drawn = np.asarray(viz.draw_legend(entries, 40))
    with pytest.warns(UserWarning, match="no available font draws"):
        boxes = np.asarray(viz.draw_legend(missing, 40))  # the missing-glyph box
    assert drawn.shape[0] == boxes.shape[0]
    if drawn.shape == boxes.shape:
        assert not np.array_equal(drawn, boxes)


def test_without_a_truetype_font_text_still_draws_with_one_warning(fresh_fonts):
    fresh_fonts.setattr(viz, "_font_candidates", lambda: [])
    with pytest.warns(UserWarning, match="no TrueType font found") as record:
        assert viz.font_files() == ()
        pic = viz.overlay(np.zeros((30, 40, 3), np.uint8), np.zeros((30, 40), np.int64), ["cat"])
    assert pic.width > 40
    assert sum("no TrueType font" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same thing
        viz.font_files.cache_clear()
        viz.font_files()


def test_font_env_is_tried_first_and_a_bad_one_warns(fresh_fonts, tmp_path):
    fresh_fonts.setenv(viz.FONT_ENV, str(tmp_path / "absent.ttf"))
    with pytest.warns(UserWarning, match="MAFT_FONT.*absent.ttf"):
        viz.font_files()
    found = [p for p in viz.SYSTEM_FONTS if Path(p).is_file()]
    if found:
        viz.font_files.cache_clear()
        fresh_fonts.setenv(viz.FONT_ENV, found[-1])
        assert viz.font_files()[0] == found[-1]


def test_characters_no_font_has_warn_once(fresh_fonts):
    viz.font_files()
    with pytest.warns(UserWarning, match="no available font draws") as record:
        viz.draw_legend([(0, "\U0010fffe", (1, 2, 3))], 40)
        viz.draw_legend([(0, "\U0010fffe", (1, 2, 3))], 40)
    assert len([w for w in record if "no available font" in str(w.message)]) == 1


# ------------------------------------------------------------------ colours follow the names
def test_class_colours_follow_names_not_positions():
    voc = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow"]
    colours = viz.class_colors(voc)
    shuffled = voc[::-1]
    again = viz.class_colors(shuffled)
    for i, name in enumerate(voc):
        assert tuple(again[shuffled.index(name)]) == tuple(colours[i])
    assert len({tuple(c) for c in colours.tolist()}) == len(voc)
    # alone, a class gets its hash colour; the name is compared case- and space-insensitively
    assert tuple(viz.class_colors(["Cat "])[0]) == viz.name_color("cat") == viz.name_color("CAT")
    assert (
        viz.name_slot("sky")
        == int.from_bytes(hashlib.blake2b(b"sky", digest_size=8).digest(), "big") % viz.PALETTE_SIZE
    )  # the documented hash: stable across runs and versions


def test_colliding_names_get_distinct_colours_deterministically():
    seen: dict[int, str] = {}
    for i in range(5000):  # find two names hashing to the same palette entry
        name = f"class{i}"
        slot = viz.name_slot(name)
        if slot in seen:
            a, b = seen[slot], name
            break
        seen[slot] = name
    first, second = sorted([a, b])
    pair = viz.class_colors([a, b])
    assert tuple(pair[0]) != tuple(pair[1])
    keeper = 0 if a == first else 1
    assert tuple(pair[keeper]) == viz.name_color(first)  # the smaller name keeps the entry
    assert np.array_equal(viz.class_colors([b, a]), pair[::-1])  # order-independent


def test_large_vocabulary_colours_are_all_distinct():
    from maft.data.vocabulary import Vocabulary

    names = Vocabulary.from_benchmark("ade20k_847", None).names
    colours = viz.class_colors(names)
    assert len({tuple(c) for c in colours.tolist()}) == 847
    assert (colours.astype(int).sum(1) >= 150).all()  # never close to the black of ignore


def test_overlay_colour_of_a_class_is_the_same_in_any_vocabulary(labels, image):
    # the same scene labelled with the vocabulary in another order: same picture
    perm = [3, 0, 4, 1, 2]  # new position of each old index
    names = [None] * 5
    for old, new in enumerate(perm):
        names[new] = NAMES[old]
    relabelled = labels.copy()
    keep = labels < 5
    relabelled[keep] = np.asarray(perm)[labels[keep]]
    a = viz.overlay(image, labels, NAMES, legend=False)
    b = viz.overlay(image, relabelled, names, legend=False)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    pa = np.asarray(viz.panel(image, labels, labels, NAMES))
    pb = np.asarray(viz.panel(image, relabelled, relabelled, names))
    assert np.array_equal(pa, pb)  # legend rows too: same names, colours and order
