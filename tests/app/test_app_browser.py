"""End to end in a real browser: serve the app on 127.0.0.1, drive headless Chromium through it.

Uses Debian's ``chromium`` through Playwright (``executable_path``; Playwright's own browser
download is never used). Outside CI the test skips, naming what is missing; in CI (``CI`` or
``MAFT_REQUIRE_BROWSER`` set, as ``.ci/run`` does after installing the browser) it fails instead.

``MAFT_WRITE_SCREENSHOT=1`` also writes the page to ``docs/images/app_screenshot.png``;
``MAFT_APP_CKPT=<checkpoint>`` (and ``MAFT_APP_SHORT_SIDE``, default 640) runs the test on that
checkpoint with the page's last example, a world validation scene: how the README's screenshot
is taken after ``make demo``, as ``make app`` serves it.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maft.app import ALPHA

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "images" / "app_screenshot.png"
TINY_VOCAB = "sky, grass, tree | unseen, road, water"
WAIT_MS = 30_000  # every wait is bounded


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def find_chromium() -> str | None:
    """Path of a Chromium executable: ``MAFT_CHROMIUM``, Debian's, or one on PATH."""
    candidates = [os.environ.get("MAFT_CHROMIUM", ""), "/usr/lib/chromium/chromium"]
    candidates += [shutil.which(n) or "" for n in ("chromium", "chromium-browser", "google-chrome")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser executable, or skip (fail in CI) with the reason."""
    missing = []
    for module, extra in (("gradio", "app"), ("playwright", "dev")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the {module} package (pip install -e '.[{extra}]')")
    path = find_chromium()
    if path is None:
        missing.append("a Chromium browser (Debian: apt-get install chromium)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if _truthy("CI") or _truthy("MAFT_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return str(path)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(chromium, predictor, tmp_path_factory):
    """The app on 127.0.0.1 (a free port), with its examples; closed after the module."""
    from maft.app import build_app, docs_images, example_rows, launch
    from maft.predictor import Predictor

    ckpt = os.environ.get("MAFT_APP_CKPT")
    short_side = int(os.environ.get("MAFT_APP_SHORT_SIDE", "640"))
    model = Predictor.from_checkpoint(ckpt, "cpu", short_side=short_side) if ckpt else predictor
    folder = tmp_path_factory.mktemp("examples")
    examples = example_rows(folder)
    demo = build_app(model, examples, checkpoint=ckpt or "tiny test checkpoint")
    url = launch(demo, port=free_port(), block=False, allowed_paths=[folder, docs_images()])
    try:
        yield url, model, examples[-1] if ckpt else None
    finally:
        demo.close()


def _colours(overlay: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The class colour under each overlay pixel: inverts ``image * (1 - a) + colour * a``."""
    return (overlay.astype(np.float64) - (1 - ALPHA) * image.astype(np.float64)) / ALPHA


def _click_target(model, image: np.ndarray, vocab: str) -> tuple[int, int, int]:
    """A pixel whose proposal differs from the one shown first (if any), and that proposal."""
    from maft.app import proposal_at, segment

    props = segment(model, image, vocab).proposals
    first = props.choices()[0][1]
    h, w = image.shape[:2]
    for y in range(h // 8, h, max(h // 4, 1)):
        for x in range(w // 8, w, max(w // 4, 1)):
            q = proposal_at(props, x, y)
            if q is not None and q != first:
                return x, y, q
    return w // 2, h // 2, int(proposal_at(props, w // 2, h // 2))


def test_browser_upload_segment_and_errors(served, tmp_path, rgb):
    """Upload, type, press, wait; the overlay has the input's size and the legend's colours."""
    from playwright.sync_api import sync_playwright

    url, model, example = served
    if example:
        path, vocab = Path(example[0]), example[1]
    else:
        path, vocab = tmp_path / "photo.png", TINY_VOCAB
        Image.fromarray(rgb).save(path)
    with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            page.locator("#input-image input[type=file]").set_input_files(str(path))
            page.locator("#input-image img").wait_for()  # the upload has arrived
            page.locator("#vocabulary textarea").fill(vocab)
            page.locator("#segment").click()
            result = page.locator("#overlay img")
            result.wait_for()
            page.locator("#legend [data-color]").first.wait_for()
            page.wait_for_function("() => document.querySelector('#proposal input')?.value")
            top = page.locator("#proposal-top").inner_text()

            # a click on the overlay picks the proposal under the pointer
            x, y, expected = _click_target(model, image, vocab)
            box = result.bounding_box()
            scale = min(box["width"] / image.shape[1], box["height"] / image.shape[0])
            left = box["x"] + (box["width"] - image.shape[1] * scale) / 2
            upper = box["y"] + (box["height"] - image.shape[0] * scale) / 2
            page.mouse.click(left + (x + 0.5) * scale, upper + (y + 0.5) * scale)
            page.wait_for_function(
                "q => document.querySelector('#proposal input')?.value.startsWith(q)",
                arg=f"#{expected}:",
            )

            response = page.request.get(result.get_attribute("src"))
            assert response.ok
            overlay = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
            legend = page.locator("#legend [data-color]").evaluate_all(
                "els => els.map(e => [e.dataset.class, e.dataset.color])"
            )
            shares = page.locator("#shares").inner_text()
            page.screenshot(path=str(tmp_path / "app_screenshot.png"), full_page=True)
            if _truthy("MAFT_WRITE_SCREENSHOT"):  # the README's copy, in 256 colours
                with Image.open(tmp_path / "app_screenshot.png") as shot:
                    small = shot.convert("RGB").quantize(256, dither=Image.Dither.NONE)
                    small.save(SCREENSHOT, optimize=True)

            # an empty vocabulary: a message on the page, no traceback
            page.locator("#vocabulary textarea").fill(" , ")
            page.locator("#segment").click()
            error = page.locator("#error")
            error.wait_for(state="visible")
            message = error.inner_text()

            # a file that is no image: its name in a message on the page
            broken = tmp_path / "broken.png"
            broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 20)
            page.locator("#input-image input[type=file]").set_input_files(str(broken))
            page.locator("#vocabulary textarea").fill(vocab)
            page.locator("#segment").click()
            page.wait_for_function(
                "() => document.querySelector('#error')?.innerText.includes('broken.png')"
            )
            unreadable = error.inner_text()
        finally:
            browser.close()

    assert overlay.shape == image.shape  # the input's size: [H, W, 3]
    assert legend, "the legend lists no class"
    names = [n.split("|")[0].strip() for n in vocab.split(",")]
    assert {name for name, _ in legend} <= set(names)
    palette = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for _, c in legend])
    colours = _colours(overlay, image).reshape(-1, 1, 3)
    nearest = np.abs(colours - palette[None]).max(-1)  # [H*W, K]: worst channel error
    assert nearest.min(1).max() <= 2.0 + 1e-6, "an overlay pixel is not a legend colour"
    assert len(np.unique(nearest.argmin(1))) == len(legend), "a legend colour is not drawn"
    assert all(name in shares for name in names)
    assert "frozen CLIP" in top and "MAFT" in top
    assert "vocabulary is empty" in message and "Traceback" not in message
    assert "Cannot read broken.png as an image" in unreadable and "Traceback" not in unreadable
    assert (tmp_path / "app_screenshot.png").stat().st_size > 10_000
