"""The web app's functions without a browser: vocabulary box, image input, requests, CLI."""

from __future__ import annotations

import base64
import copy
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maft import app
from maft.errors import ConfigError, DatasetFileError, VocabularyError

VOCAB = "sky, grass, tree | unseen, road, water"


# ------------------------------------------------------------------------------------ vocabulary
def test_vocabulary_commas_lines_markers_and_comments():
    """Commas and new lines both separate; '| unseen' marks; '#' comments of a pasted file go."""
    text = "sky, grass\n tree | unseen \n\n# a comment\nroad|seen, water  # x"
    vocab = app.parse_vocabulary(text)
    assert vocab.names == ["sky", "grass", "tree", "road", "water"]
    assert vocab.unseen_names == ["tree"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        (None, "empty"),
        (" , \n ,", "empty"),
        ("sky, grass, Sky", "duplicate class name in the vocabulary: sky"),
        ("sky, grass | maybe", "unknown marker '| maybe' after 'grass'"),
        ("sky, | unseen", "marker but no class name"),
    ],
)
def test_vocabulary_errors_are_named(text, needle):
    """Empty, duplicate (case-insensitive) and malformed vocabularies raise VocabularyError."""
    with pytest.raises(VocabularyError, match=needle.replace("|", r"\|")):
        app.parse_vocabulary(text)


# ---------------------------------------------------------------------------------------- images
def test_read_image_accepts_paths_payloads_and_arrays(image_file, rgb):
    """A path, Gradio's upload payload, a pasted data URL and an array all give the same pixels."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    for value in (
        str(image_file),
        {"path": str(image_file), "orig_name": "photo.png"},
        {"path": None, "url": data_url},
        rgb,
    ):
        np.testing.assert_array_equal(app.read_image(value), rgb)


def test_read_image_errors_name_the_upload(tmp_path):
    """No image, or a file that is no image: one readable message with the uploaded name."""
    for empty in (None, "", {"path": None, "url": None}):
        with pytest.raises(DatasetFileError, match="no image: upload an image"):
            app.read_image(empty)
    bad = tmp_path / "gradio_cache_abc" / "upload.png"
    bad.parent.mkdir()
    bad.write_text("not an image")
    with pytest.raises(DatasetFileError) as err:
        app.read_image({"path": str(bad), "orig_name": "holiday.png"})
    message = str(err.value)
    assert message.startswith("cannot read holiday.png as an image")
    assert str(bad.parent) not in message  # the server's temp path stays on the server


# ---------------------------------------------------------------------------------------- requests
def test_segment_overlay_legend_shares_and_comparison(predictor, rgb):
    """Overlay of the input's size in the legend's colours; every class in the shares table."""
    res = app.segment(predictor, rgb, VOCAB)
    assert res.overlay.shape == rgb.shape and res.overlay.dtype == np.uint8
    colours = np.array([c for _, _, c in res.legend], dtype=np.float64)  # [K, 3]
    recovered = (res.overlay - (1 - app.ALPHA) * rgb.astype(np.float64)) / app.ALPHA
    err = np.abs(recovered.reshape(-1, 1, 3) - colours[None]).max(-1).min(1)
    assert err.max() <= 2.0
    assert [row[0] for row in res.shares][: len(res.legend)] == [n for _, n, _ in res.legend]
    assert sorted(row[0] for row in res.shares) == sorted(["sky", "grass", "tree", "road", "water"])
    assert sum(row[1] for row in res.shares) == pytest.approx(100.0, abs=0.05)
    split = {row[0]: row[2] for row in res.shares}
    # "tree" is a training class marked unseen; "road" is unseen in training; "water" is new
    assert split == {
        "sky": "seen",
        "grass": "seen",
        "tree": "unseen",
        "road": "unseen",
        "water": "unseen",
    }
    assert res.frozen_overlay.shape == res.maft_overlay.shape == rgb.shape
    np.testing.assert_array_equal(res.maft_overlay, res.overlay)  # mode maft: the main overlay
    assert "Unseen: tree, road, water" in res.summary


def test_segment_applies_lambda_and_form_per_request(predictor, rgb):
    """The page's λ and form reach the model for one request; the checkpoint's come back after."""
    before = (predictor.task.lambda_, predictor.task.form)
    res = app.segment(predictor, rgb, VOCAB, lambda_=0.35, form="eq1", compare=False)
    assert "λ = 0.35 (eq1 form)" in res.summary
    assert (predictor.task.lambda_, predictor.task.form) == before
    assert res.frozen_overlay is None and res.maft_overlay is None
    with pytest.raises(ConfigError, match="λ must lie in"):
        app.segment(predictor, rgb, VOCAB, lambda_=1.5)
    with pytest.raises(ConfigError, match="unknown ensemble form"):
        app.segment(predictor, rgb, VOCAB, form="eq2")
    assert (predictor.task.lambda_, predictor.task.form) == before


def test_proposals_pick_by_click_and_top5_frozen_vs_maft(predictor, rgb):
    """Dropdown entries (largest first), the proposal under a pixel, its top-5 of both towers."""
    props = app.segment(predictor, rgb, VOCAB).proposals
    choices = props.choices()
    shares = [props.rows[q]["area_share"] for _, q in choices]
    assert shares == sorted(shares, reverse=True)
    assert all(props.rows[q]["valid"] for _, q in choices)
    q = app.proposal_at(props, 10, 5)
    assert q is not None and props.rows[q]["valid"]
    n, rows, cols = props.masks.shape
    strongest = props.masks[:, int(5 * rows / 40), int(10 * cols / 70)].astype(np.float32)
    assert strongest[q] == max(strongest[i] for i in range(n) if props.rows[i]["valid"])
    assert app.proposal_at(props, 70, 5) is None and app.proposal_at(props, -1, 5) is None
    picture, table = app.proposal_view(props, q)
    assert picture.shape == rgb.shape
    assert table["headers"] == ["rank", "frozen CLIP", "p (frozen CLIP)", "MAFT", "p (MAFT)"]
    assert [r[0] for r in table["data"]] == [1, 2, 3, 4, 5]
    probs = [float(r[4]) for r in table["data"]]
    assert probs == sorted(probs, reverse=True) and 0 <= probs[-1] <= probs[0] <= 1
    assert app.proposal_view(props, None)[0] is None


def test_run_request_turns_every_failure_into_a_message(predictor, rgb, monkeypatch, caplog):
    """Bad input and unexpected failures give {'error': message}; nothing raises."""
    ok = app.run_request(predictor, rgb, VOCAB)
    assert ok["error"] is None and ok["selected"] == ok["choices"][0][1]
    assert ok["shares"]["headers"] == app.SHARE_HEADERS
    assert 'data-color="#' in ok["legend"]
    cases = {
        "No image": (None, VOCAB),
        "The vocabulary is empty": (rgb, "  "),
        "Duplicate class name": (rgb, "sky, SKY"),
    }
    for start, (image, vocab) in cases.items():
        assert app.run_request(predictor, image, vocab)["error"].startswith(start)

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(predictor, "run", boom)
    with caplog.at_level("ERROR", logger="maft.app"):
        res = app.run_request(predictor, rgb, VOCAB)
    assert res["error"] == (
        "Unexpected RuntimeError while segmenting: out of memory (details in the server log)"
    )
    assert "Traceback" not in res["error"] and "out of memory" in caplog.text


def test_identical_towers_mean_no_comparison(predictor, rgb):
    """A checkpoint whose fine-tuned tower equals its frozen one shows one column, no pair."""
    from maft.predictor import Predictor

    assert app.frozen_available(predictor) == (True, "")
    task = copy.deepcopy(predictor.task)
    task.teacher_visual.load_state_dict(task.clip_model.visual.state_dict())
    same = Predictor(task, device="cpu", short_side=32)
    ok, why = app.frozen_available(same)
    assert not ok and "identical" in why
    res = app.segment(same, rgb, VOCAB, compare=True)
    assert res.frozen_overlay is None and res.proposals.columns == ("maft", "maft")
    assert app.proposal_view(res.proposals, 0)[1]["headers"] == ["rank", "maft", "p"]


# ---------------------------------------------------------------------------------------- examples
def test_example_rows_world_validation_scenes_and_docs_sample(tmp_path):
    """World validation scenes (as `make demo` writes them) plus docs/images/sample.jpg."""
    from maft.world.scenes import WORLD_CLASSES, generate_scene, scene_rng

    docs = tmp_path / "docs"
    docs.mkdir()
    Image.new("RGB", (8, 8)).save(docs / "sample.jpg")
    rows = app.example_rows(tmp_path / "examples", count=2, docs=docs)
    assert len(rows) == 3
    assert rows[0][0] == str(docs / "sample.jpg") and "| unseen" in rows[0][1]
    for path, vocab in rows[1:]:
        i = int(Path(path).stem.rsplit("_", 1)[1])  # world_val_<index>.png
        scene = generate_scene(scene_rng(0, "val", i), 64)
        np.testing.assert_array_equal(np.asarray(Image.open(path)), scene.image)
        names = app.parse_vocabulary(vocab).names
        assert {WORLD_CLASSES[c] for c in scene.classes} <= set(names)
        assert len(set(scene.classes)) >= 3 and len(names) == len(set(scene.classes)) + 2
    assert len(app.example_rows(tmp_path / "none", count=1, docs=tmp_path / "missing")) == 1


# ------------------------------------------------------------------------------------ page / CLI
def test_build_app_makes_a_page_with_the_named_elements(predictor):
    """The Blocks hold the elements the browser test drives."""
    pytest.importorskip("gradio")
    demo = app.build_app(predictor, checkpoint="tiny.ckpt")
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    wanted = {"input-image", "vocabulary", "segment", "error", "overlay", "legend", "shares"}
    assert wanted | {"frozen", "maft", "proposal", "proposal-top", "click-xy"} <= ids


def test_without_gradio_the_app_says_how_to_install_it(predictor, monkeypatch, capsys):
    """`maft-app` and build_app name the extra to install when Gradio is missing."""
    monkeypatch.setattr(app, "gradio_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        app.main()
    assert exit_info.value.code == 2
    assert "pip install 'maft[app]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'maft\[app\]'"):
        app.build_app(predictor)


def test_serve_loads_the_checkpoint_once(app_ckpt, tmp_path, monkeypatch):
    """Start-up reads the checkpoint once and hands the page to the server with the settings."""
    pytest.importorskip("gradio")
    from maft.config import compose
    from maft.predictor import Predictor

    loads, launched = [], {}
    real = Predictor.from_checkpoint.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(counting))
    monkeypatch.setattr(app, "launch", lambda demo, **kw: launched.update(kw) or "url")
    cfg = compose(
        [
            f"ckpt_path={app_ckpt}",
            "device=cpu",
            "short_side=32",
            "port=7999",
            "ensemble.lambda_=0.25",
            f"examples_dir={tmp_path / 'examples'}",
        ],
        config_name="app",
    )
    demo = app.serve(cfg)
    assert len(loads) == 1 and launched["port"] == 7999 and launched["host"] == "127.0.0.1"
    assert len(list((tmp_path / "examples").glob("*.png"))) == 4
    lam = [b for b in demo.blocks.values() if getattr(b, "label", "") == "λ (ensemble)"]
    assert lam and lam[0].value == 0.25


def test_cli_without_checkpoint_exits_with_one_line_and_writes_nothing(tmp_path):
    """`python -m maft.app` without ckpt_path: exit 2, a hint, no outputs/ or .hydra/ folder."""
    pytest.importorskip("gradio")
    done = subprocess.run(
        [sys.executable, "-m", "maft.app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "ckpt_path is required" in done.stderr and "Traceback" not in done.stderr
    assert list(Path(tmp_path).iterdir()) == []


def test_requests_reuse_the_loaded_model(predictor, rgb, monkeypatch):
    """Two requests run on the same task object: nothing is reloaded per request."""
    seen = []
    original = predictor.run

    def spy(*args, **kwargs):
        seen.append(id(predictor.task))
        return original(*args, **kwargs)

    monkeypatch.setattr(predictor, "run", spy)
    with torch.no_grad():
        app.run_request(predictor, rgb, VOCAB, compare=False)
        app.run_request(predictor, rgb, VOCAB, compare=False)
    assert len(seen) == 2 and len(set(seen)) == 1
