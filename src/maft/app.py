"""`python -m maft.app ckpt_path=...`: a web page to segment an image with a typed vocabulary.

The page (Gradio, the optional ``app`` extra) holds an image upload, a vocabulary box (comma- or
line-separated names; ``name | unseen`` marks a class without training labels), the λ-ensemble
weight and form, and a button. It shows the overlay with its legend, the class shares as a table
and, when the checkpoint's frozen CLIP tower differs from its fine-tuned one, frozen CLIP vs MAFT
overlays and the top-5 classes of the proposal the user clicks or picks. The model is loaded once at
start-up; every request reuses it. Bad input gives a message on the page, never a traceback.

The functions below do the work without a browser (``parse_vocabulary``, ``read_image``,
``segment``, ``proposal_at``, ``proposal_view``, ``run_request``); ``build_app`` wires them to
the page.
"""

from __future__ import annotations

import base64
import binascii
import html
import importlib.util
import io
import logging
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
from omegaconf import DictConfig

from maft.config import CONFIG_DIR
from maft.errors import CheckpointError, ConfigError, DatasetFileError, MaftError, VocabularyError

if TYPE_CHECKING:
    import gradio as gr

    from maft.data.vocabulary import Vocabulary
    from maft.predictor import Predictor

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "maft-app needs Gradio, an optional dependency: pip install 'maft[app]' "
    "(from a checkout: pip install -e '.[app]')"
)
ALPHA = 0.5  # overlay opacity of the class colours (as Prediction.overlay)
FROZEN_MODE, MAFT_MODE = "frozen_ip_clip", "maft"
VOCAB_INFO = (
    "Class names separated by commas or new lines. Append '| unseen' to a name to treat it as "
    "unseen in the ensemble (names that are not training classes count as unseen anyway)."
)
PROPOSAL_HEADERS = ["rank", "frozen CLIP", "p (frozen CLIP)", "MAFT", "p (MAFT)"]
SHARE_HEADERS = ["class", "share %", "split"]
_LOCK = threading.Lock()  # one model per process: λ / form are set on it for each request
_FROZEN: weakref.WeakKeyDictionary[Any, tuple[bool, str]] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------- inputs
def parse_vocabulary(text: str | None) -> Vocabulary:
    """The vocabulary box -> Vocabulary: names split on commas and new lines, ``| unseen`` marks."""
    from maft.data.vocabulary import Vocabulary

    names: list[str] = []
    seen: list[bool] = []
    for line in (text or "").splitlines():
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]  # a pasted classes.txt: drop comments
        for item in line.split(","):
            name, bar, marker = item.strip().partition("|")
            name, marker = name.strip(), marker.strip().lower()
            if not name and not bar:
                continue
            if not name:
                raise VocabularyError(f"'{item.strip()}' has a marker but no class name")
            if bar and marker not in ("seen", "unseen"):
                raise VocabularyError(
                    f"unknown marker '| {marker}' after '{name}': write '{name} | unseen' "
                    "(or '| seen')"
                )
            names.append(name)
            seen.append(marker != "unseen")
    if not names:
        raise VocabularyError(
            "the vocabulary is empty: type at least one class name, e.g. sky, grass, water"
        )
    folded: dict[str, str] = {}
    dupes: list[str] = []
    for name in names:
        key = name.casefold()
        if key in folded and folded[key] not in dupes:
            dupes.append(folded[key])
        folded.setdefault(key, name)
    if dupes:
        raise VocabularyError(
            f"duplicate class name{'s' if len(dupes) > 1 else ''} in the vocabulary: "
            f"{', '.join(dupes)} (give each class once)"
        )
    return Vocabulary.from_names(names, seen)


def _decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL (a pasted image)."""
    try:
        return base64.b64decode(url.split(",", 1)[1], validate=False)
    except (IndexError, binascii.Error, ValueError) as err:
        raise DatasetFileError(f"cannot decode the pasted image: {err}") from None


def read_image(value: Any) -> np.ndarray:
    """Uploaded image (Gradio payload, path, PIL, array) -> uint8 ``[H, W, 3]``; named errors."""
    from PIL import Image

    from maft.predictor import load_image

    if isinstance(value, dict):  # Gradio's upload payload: {"path": ..., "orig_name": ..., ...}
        name = value.get("orig_name") or Path(str(value.get("path") or "image")).name
        url = str(value.get("url") or "")
        value = value.get("path") or (_decode_data_url(url) if url.startswith("data:") else None)
    else:
        name = Path(str(value)).name if isinstance(value, (str, Path)) else "the image"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DatasetFileError("no image: upload an image (or click an example) first")
    try:
        if isinstance(value, bytes):  # a pasted image
            with Image.open(io.BytesIO(value)) as im:
                return load_image(im.convert("RGB"))
        return load_image(value)
    except (DatasetFileError, OSError, ValueError) as err:
        reason = str(err)
        if isinstance(value, (str, Path)):
            reason = reason.removeprefix(f"cannot read image {value}: ").replace(str(value), name)
        raise DatasetFileError(
            f"cannot read {name} as an image (PNG, JPEG, WebP, BMP or TIFF): {reason}"
        ) from None


# ---------------------------------------------------------------------------------------- model
def frozen_available(predictor: Predictor) -> tuple[bool, str]:
    """Whether the frozen CLIP tower exists and differs from the fine-tuned one (and why not)."""
    import torch

    task = predictor.task
    if task in _FROZEN:  # checked once per model
        return _FROZEN[task]
    teacher = getattr(task, "teacher_visual", None)
    student = getattr(getattr(task, "clip_model", None), "visual", None)
    if teacher is None or student is None:
        answer = (False, "this checkpoint carries no frozen CLIP tower")
    else:
        a, b = teacher.state_dict(), student.state_dict()
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        reason = "this checkpoint's fine-tuned and frozen CLIP towers are identical"
        answer = (False, reason) if same else (True, "")
    _FROZEN[task] = answer
    return answer


@contextmanager
def ensemble_settings(
    predictor: Predictor, lambda_: float | None, form: str | None
) -> Iterator[None]:
    """Hold the model lock with the request's λ and form set (the previous ones come back after)."""
    from maft.models.ensemble import FORMS

    if lambda_ is not None and not 0.0 <= float(lambda_) <= 1.0:
        raise ConfigError(f"λ must lie in [0, 1], got {lambda_}")
    if form is not None and form not in FORMS:
        raise ConfigError(f"unknown ensemble form {form!r}; choose one of {', '.join(FORMS)}")
    task = predictor.task
    with _LOCK:
        before = {"lambda_": task.lambda_, "form": task.form}
        task.configure_inference(lambda_=lambda_, form=form)
        try:
            yield
        finally:
            task.configure_inference(**before)


# ---------------------------------------------------------------------------------------- results
@dataclass
class ProposalSet:
    """One request's proposals: low-resolution masks and per-proposal top-k of each tower."""

    image: np.ndarray  # uint8 [H, W, 3]
    masks: np.ndarray  # float16 [N, h, w]: the valid 1/4 grid, covering the whole image
    rows: list[dict[str, Any]]  # per proposal: index, area_share, valid, top_k, frozen_top_k
    columns: tuple[str, str]  # the two towers compared ("frozen CLIP", "MAFT") or the mode alone

    def choices(self) -> list[tuple[str, int]]:
        """Dropdown entries of the non-empty proposals, largest first: (label, index)."""
        order = sorted(
            (r for r in self.rows if r["valid"]), key=lambda r: (-r["area_share"], r["index"])
        )
        out = []
        for r in order:
            top = r["top_k"][0][0] if r["top_k"] else "?"
            label = f"#{r['index']}: {100 * r['area_share']:.0f}% of the image, {top}"
            out.append((label, r["index"]))
        return out


@dataclass
class Outcome:
    """Everything the page shows for one request."""

    overlay: np.ndarray  # uint8 [H, W, 3]: the image with the class colours blended in
    legend: list[tuple[int, str, tuple[int, int, int]]]  # classes present: index, name, colour
    shares: list[list[Any]]  # [class, share in %, "seen" / "unseen"], every vocabulary class
    summary: str
    proposals: ProposalSet
    frozen_overlay: np.ndarray | None = None
    maft_overlay: np.ndarray | None = None
    seen_names: list[str] = field(default_factory=list)
    unseen_names: list[str] = field(default_factory=list)


def _overlay(image: np.ndarray, labels: Any, names: Sequence[str]) -> tuple[np.ndarray, list]:
    from maft.viz import overlay

    picture, entries = overlay(image, labels, names, alpha=ALPHA, legend=False, return_legend=True)
    return np.asarray(picture), entries


def _share_rows(label_map: Any, names: Sequence[str], seen_names: Sequence[str]) -> list[list]:
    """Pixel share (%) of every vocabulary class, largest first, with its split."""
    import torch

    counts = torch.bincount(label_map.flatten(), minlength=len(names)).tolist()
    total = max(sum(counts), 1)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], i))
    seen = set(seen_names)
    return [
        [names[i], round(100.0 * counts[i] / total, 2), "seen" if names[i] in seen else "unseen"]
        for i in order
    ]


def segment(
    predictor: Predictor,
    image: Any,
    vocabulary: str | Vocabulary,
    lambda_: float | None = None,
    form: str | None = None,
    compare: bool = True,
    top_k: int = 5,
) -> Outcome:
    """Run one request: overlay, legend, shares, frozen vs MAFT overlays, proposals' top-k."""
    from maft.predictor import as_vocabulary

    img = read_image(image)
    vocab = (
        parse_vocabulary(vocabulary) if isinstance(vocabulary, str) else as_vocabulary(vocabulary)
    )
    compare = bool(compare) and frozen_available(predictor)[0]
    main = predictor.mode
    modes = [main] + [m for m in (FROZEN_MODE, MAFT_MODE) if compare and m != main]
    t0 = time.perf_counter()
    with ensemble_settings(predictor, lambda_, form):
        runs = {m: predictor.run(img, vocab, mode=m) for m in modes}
        lam, frm = predictor.task.lambda_, predictor.task.form
    seconds = time.perf_counter() - t0
    out, info = runs[main]
    split = info["vocab"]
    names = list(split.names)
    labels = out.labels[0].cpu().long()
    overlay, legend = _overlay(img, labels.numpy(), names)
    result = Outcome(
        overlay=overlay,
        legend=legend,
        shares=_share_rows(labels, names, split.seen_names),
        summary=_summary(predictor.mode, split, lam, frm, seconds),
        proposals=_proposals(runs, main, compare, img, names, top_k),
        seen_names=split.seen_names,
        unseen_names=split.unseen_names,
    )
    if compare:
        frozen_labels = runs[FROZEN_MODE][0].labels[0].cpu().numpy()
        result.frozen_overlay = _overlay(img, frozen_labels, names)[0]
        result.maft_overlay = _overlay(img, runs[MAFT_MODE][0].labels[0].cpu().numpy(), names)[0]
    return result


def _proposals(
    runs: dict[str, tuple[Any, dict[str, Any]]],
    main: str,
    compare: bool,
    image: np.ndarray,
    names: Sequence[str],
    top_k: int,
) -> ProposalSet:
    """Masks and top-k ``A^c`` classes per proposal: frozen CLIP vs MAFT, or the main mode alone."""
    from maft.models.segmenter import describe_proposals, proposal_masks

    out = runs[MAFT_MODE if compare else main][0]
    mine = describe_proposals(out, names, top_k)
    frozen = describe_proposals(runs[FROZEN_MODE][0], names, top_k) if compare else None
    rows = [
        {
            "index": p["index"],
            "area_share": p["area_share"],
            "valid": p["valid"],
            "top_k": [tuple(t) for t in p["clip_top_k"]],
            "frozen_top_k": [tuple(t) for t in frozen[p["index"]]["clip_top_k"]]
            if frozen
            else None,
        }
        for p in mine
    ]
    masks = proposal_masks(out, full_size=False).cpu().float().numpy().astype(np.float16)
    columns = ("frozen CLIP", "MAFT") if compare else (main, main)
    return ProposalSet(image=image, masks=masks, rows=rows, columns=columns)


def _summary(mode: str, split: Vocabulary, lam: float, form: str, seconds: float) -> str:
    """One Markdown line: mode, ensemble, which names counted as seen / unseen, time."""
    seen = ", ".join(split.seen_names) or "none"
    unseen = ", ".join(split.unseen_names) or "none"
    return (
        f"Mode `{mode}`, λ = {lam:g} ({form} form), {seconds:.2f} s. "
        f"Seen (training classes): {markdown_text(seen)}. Unseen: {markdown_text(unseen)}."
    )


def markdown_text(text: str) -> str:
    """``text`` shown literally in Markdown: HTML escaped, Markdown punctuation backslashed."""
    return re.sub(r"([\\`*_{}\[\]()#+!|~-])", r"\\\1", html.escape(text, quote=False))


def legend_html(entries: Sequence[tuple[int, str, tuple[int, int, int]]]) -> str:
    """The legend as HTML: a swatch (``data-color``) and the name of each class present."""
    items = []
    for index, name, (r, g, b) in entries:
        colour = f"#{r:02x}{g:02x}{b:02x}"
        label = html.escape(name)
        items.append(
            f'<span class="maft-legend-item" data-class="{label}" data-index="{index}" '
            f'data-color="{colour}" style="display:inline-flex;align-items:center;'
            f'margin:2px 12px 2px 0"><span style="display:inline-block;width:14px;height:14px;'
            f'margin-right:5px;background:{colour};border:1px solid #888"></span>{label}</span>'
        )
    return f'<div class="maft-legend">{"".join(items) or "(no class)"}</div>'


# ---------------------------------------------------------------------------------------- proposals
def proposal_at(proposals: ProposalSet, x: float, y: float) -> int | None:
    """Index of the proposal whose mask is strongest at image pixel ``(x, y)`` (non-empty first)."""
    h, w = proposals.image.shape[:2]
    if not (0 <= x < w and 0 <= y < h) or not proposals.rows:
        return None
    _, rows, cols = proposals.masks.shape
    r, c = min(int(y * rows / h), rows - 1), min(int(x * cols / w), cols - 1)
    values = proposals.masks[:, r, c].astype(np.float32)
    valid = np.array([row["valid"] for row in proposals.rows], dtype=bool)
    if valid.any():
        values = np.where(valid, values, -1.0)
    return int(np.argmax(values))


def proposal_view(proposals: ProposalSet, index: int | None) -> tuple[np.ndarray | None, dict]:
    """Picture of one proposal (its mask on the image) and its top-k table, frozen vs MAFT."""
    from PIL import Image

    compare = proposals.columns[0] != proposals.columns[1]
    first, second = proposals.columns
    headers = ["rank", first, f"p ({first})", second, f"p ({second})"]
    headers = headers if compare else ["rank", second, "p"]
    if index is None or not 0 <= int(index) < len(proposals.rows):
        return None, {"headers": headers, "data": []}
    row = proposals.rows[int(index)]
    img = proposals.image
    mask = Image.fromarray(proposals.masks[int(index)].astype(np.float32), "F")
    m = np.clip(np.asarray(mask.resize((img.shape[1], img.shape[0]), Image.BILINEAR)), 0, 1)
    m = m[..., None]  # [H, W, 1]
    gold = np.array([255, 200, 0], np.float32)  # the proposal tinted, the rest dimmed
    picture = img.astype(np.float32) * (0.25 + 0.75 * m) * (1 - 0.3 * m) + gold * 0.3 * m
    picture = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    maft, frozen = row["top_k"], row["frozen_top_k"]
    if not compare or frozen is None:
        data = [[k + 1, n, f"{p:.3g}"] for k, (n, p) in enumerate(maft)]
    else:
        data = [
            [k + 1, f[0], f"{f[1]:.3g}", a[0], f"{a[1]:.3g}"]
            for k, (f, a) in enumerate(zip(frozen, maft))
        ]
    return picture, {"headers": headers, "data": data}


# ---------------------------------------------------------------------------------------- requests
def error_message(err: BaseException) -> str:
    """A one-line message for the page: maft's named errors as they are, others named, logged."""
    if isinstance(err, MaftError):
        text = str(err)
    else:
        log.error("request failed", exc_info=(type(err), err, err.__traceback__))
        text = (
            f"unexpected {type(err).__name__} while segmenting: {err} (details in the server log)"
        )
    return text[:1].upper() + text[1:]


def run_request(
    predictor: Predictor,
    image: Any,
    vocabulary: str | None,
    lambda_: float | None = None,
    form: str | None = None,
    compare: bool = True,
    top_k: int = 5,
) -> dict[str, Any]:
    """One button press -> the page's values (plain data); ``error`` holds the message, if any."""
    try:
        res = segment(predictor, image, vocabulary or "", lambda_, form, compare, top_k)
    except Exception as err:  # noqa: BLE001 - the page shows a message, never a traceback
        return {"error": error_message(err)}
    choices = res.proposals.choices()
    selected = choices[0][1] if choices else None
    picture, table = proposal_view(res.proposals, selected)
    return {
        "error": None,
        "overlay": res.overlay,
        "legend": legend_html(res.legend),
        "summary": res.summary,
        "shares": {"headers": SHARE_HEADERS, "data": res.shares},
        "frozen": res.frozen_overlay,
        "maft": res.maft_overlay,
        "choices": choices,
        "selected": selected,
        "proposal_picture": picture,
        "proposal_table": table,
        "proposals": res.proposals,
    }


# ---------------------------------------------------------------------------------------- examples
def docs_images() -> Path:
    """``docs/images`` of the checkout this module runs from (absent in an installed wheel)."""
    return Path(__file__).resolve().parents[2] / "docs" / "images"


def example_rows(
    folder: str | Path, count: int = 4, docs: Path | None = None, min_classes: int = 3
) -> list[list[str]]:
    """Example (image, vocabulary) pairs: ``docs/images/sample.jpg`` and world validation images.

    The first ``count`` world validation scenes with at least ``min_classes`` classes (seed 0,
    64 px, as ``make demo`` writes them) are drawn into ``folder``; each vocabulary holds the
    classes present plus two others, in a shuffled order.
    """
    from PIL import Image

    from maft.world.scenes import WORLD_CLASSES, generate_scene, scene_rng

    rows = []
    sample = (docs or docs_images()) / "sample.jpg"
    if sample.is_file():
        rows.append([str(sample), "zebra, wood | unseen, brick, water | unseen, sky"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    found = 0
    for i in range(100 * max(count, 1)):
        if found == count:
            break
        scene = generate_scene(scene_rng(0, "val", i), 64)
        present = [WORLD_CLASSES[c] for c in dict.fromkeys(scene.classes)]
        if len(present) < min_classes:
            continue
        path = folder / f"world_val_{i:06d}.png"
        Image.fromarray(scene.image, "RGB").save(path)
        rng = np.random.default_rng(i)
        others = [n for n in WORLD_CLASSES if n not in present]
        names = present + [str(n) for n in rng.choice(others, size=2, replace=False)]
        rows.append([str(path), ", ".join(names[k] for k in rng.permutation(len(names)))])
        found += 1
    return rows


# ---------------------------------------------------------------------------------------- the page
CSS = """
#input-image img, #overlay img, #frozen img, #maft img, #proposal-picture img {
  width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
#error { border: 1px solid #d33; border-radius: 6px; padding: 4px 10px; background: #fff4f4; }
"""
# Small images are shown enlarged (CSS above), which Gradio's own image click coordinates do not
# allow for; this listener sends the clicked pixel of the overlay, in image pixels, to #click-xy.
CLICK_JS = """
() => {
  document.addEventListener("click", (event) => {
    const img = event.target.closest ? event.target.closest("#overlay img") : null;
    const box = document.querySelector("#click-xy textarea, #click-xy input");
    if (!img || !box || !img.naturalWidth) return;
    const r = img.getBoundingClientRect();
    const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const x = (event.clientX - r.left - (r.width - img.naturalWidth * s) / 2) / s;
    const y = (event.clientY - r.top - (r.height - img.naturalHeight * s) / 2) / s;
    if (x < 0 || y < 0 || x >= img.naturalWidth || y >= img.naturalHeight) return;
    box.value = x.toFixed(1) + "," + y.toFixed(1) + "," + Date.now();  // a new value per click
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }, true);
}
"""


def gradio_available() -> bool:
    """True when the optional ``gradio`` package is installed."""
    return importlib.util.find_spec("gradio") is not None


def build_app(
    predictor: Predictor,
    examples: Sequence[Sequence[str]] = (),
    checkpoint: str = "",
    top_k: int = 5,
) -> gr.Blocks:
    """The page: inputs, button, overlay + legend + shares, frozen vs MAFT, proposal top-k.

    Serve it with :func:`launch`, which adds the page's CSS and its click listener.
    """
    try:
        import gradio as gr
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    from maft.models.ensemble import FORMS

    frozen_ok, why_not = frozen_available(predictor)
    task = predictor.task
    training = ", ".join(task.vocab.seen_names)
    header = (
        "## maft: open-vocabulary segmentation\n"
        f"Checkpoint `{checkpoint or 'in memory'}` on {predictor.device}, mode `{predictor.mode}`. "
        f"Training (seen) classes: {markdown_text(training) or 'none'}."
    )

    def run(
        image: Any, vocabulary: str | None, lambda_: float, form: str, compare: bool
    ) -> tuple[Any, ...]:
        res = run_request(predictor, image, vocabulary, lambda_, form, compare, top_k)
        if res["error"]:
            gr.Warning(res["error"])
            empty_top = {"headers": PROPOSAL_HEADERS, "data": []}
            return (
                gr.update(value=f"**Error:** {markdown_text(res['error'])}", visible=True),
                None,
                "",
                "",
                {"headers": SHARE_HEADERS, "data": []},
                None,
                None,
                gr.update(choices=[], value=None),
                None,
                empty_top,
                None,
            )
        return (
            gr.update(value="", visible=False),
            res["overlay"],
            res["legend"],
            res["summary"],
            res["shares"],
            res["frozen"],
            res["maft"],
            gr.update(choices=res["choices"], value=res["selected"]),
            res["proposal_picture"],
            res["proposal_table"],
            res["proposals"],
        )

    def click(proposals: ProposalSet | None, xy: str) -> Any:
        try:
            x, y = (float(v) for v in str(xy).split(",")[:2])  # "x,y,<click time>"
        except ValueError:
            return gr.update()
        index = None if proposals is None else proposal_at(proposals, x, y)
        return gr.update() if index is None else gr.update(value=index)

    def view(proposals: ProposalSet | None, index: int | None) -> tuple[Any, dict]:
        if proposals is None:
            return None, {"headers": PROPOSAL_HEADERS, "data": []}
        return proposal_view(proposals, index)

    with gr.Blocks(title="maft: open-vocabulary segmentation", analytics_enabled=False) as demo:
        proposals = gr.State(None)
        gr.Markdown(header)
        with gr.Row():
            with gr.Column(scale=1, min_width=340):
                image = gr.Image(
                    label="Image",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    elem_id="input-image",
                    height=260,
                )
                vocabulary = gr.Textbox(
                    label="Vocabulary",
                    lines=3,
                    placeholder="sky, grass, water | unseen",
                    info=VOCAB_INFO,
                    elem_id="vocabulary",
                )
                with gr.Row():
                    lam = gr.Slider(
                        0.0, 1.0, value=float(task.lambda_), step=0.05, label="λ (ensemble)"
                    )
                    form = gr.Radio(list(FORMS), value=str(task.form), label="ensemble form")
                compare = gr.Checkbox(
                    value=frozen_ok,
                    label="also run frozen CLIP (frozen vs MAFT)",
                    visible=frozen_ok,
                    elem_id="compare",
                )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                error = gr.Markdown(visible=False, elem_id="error")
                if examples:
                    gr.Examples(
                        [list(e) for e in examples],
                        inputs=[image, vocabulary],
                        label="Examples (click one, then Segment)",
                    )
            with gr.Column(scale=2):
                overlay = gr.Image(
                    label="Segmentation (click a region to see its proposal below)",
                    format="png",
                    interactive=False,
                    elem_id="overlay",
                    height=340,
                )
                click_xy = gr.Textbox(visible="hidden", elem_id="click-xy")
                legend = gr.HTML(elem_id="legend")
                summary = gr.Markdown(elem_id="summary")
                shares = gr.Dataframe(
                    headers=SHARE_HEADERS,
                    datatype=["str", "number", "str"],
                    interactive=False,
                    label="Class shares",
                    elem_id="shares",
                )
                with gr.Row(visible=frozen_ok):
                    frozen = gr.Image(
                        label="frozen CLIP (same colours)",
                        format="png",
                        interactive=False,
                        elem_id="frozen",
                        height=260,
                    )
                    maft = gr.Image(
                        label="MAFT", format="png", interactive=False, elem_id="maft", height=260
                    )
                if not frozen_ok:
                    gr.Markdown(f"No frozen CLIP vs MAFT comparison: {why_not}.")
        with gr.Row():
            with gr.Column(scale=1):
                pick = gr.Dropdown(
                    choices=[],
                    label="Proposal (largest first; or click the segmentation)",
                    interactive=True,
                    elem_id="proposal",
                )
                picture = gr.Image(
                    label="Proposal mask",
                    format="png",
                    interactive=False,
                    elem_id="proposal-picture",
                    height=220,
                )
            table = gr.Dataframe(
                headers=PROPOSAL_HEADERS,
                interactive=False,
                label=f"Top-{top_k} classes of the proposal (A^c)",
                elem_id="proposal-top",
                scale=2,
            )
        button.click(
            run,
            inputs=[image, vocabulary, lam, form, compare],
            outputs=[
                error,
                overlay,
                legend,
                summary,
                shares,
                frozen,
                maft,
                pick,
                picture,
                table,
                proposals,
            ],
            preprocess=False,  # the raw upload: unreadable files get our message, not Gradio's
            concurrency_limit=1,
        )
        click_xy.change(click, inputs=[proposals, click_xy], outputs=[pick])
        pick.change(view, inputs=[proposals, pick], outputs=[picture, table])
    return demo


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    block: bool = True,
    allowed_paths: Sequence[str | Path] = (),
) -> str:
    """Serve ``demo``; returns its local URL (``block=False``: at once, the server in a thread)."""
    try:
        _, url, _ = demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=not block,
            quiet=not block,
            show_error=False,
            allowed_paths=[str(p) for p in allowed_paths],
            css=CSS,
            js=CLICK_JS,
        )
    except OSError as err:
        raise ConfigError(f"cannot serve on {host}:{port}: {err} (pass another port=)") from None
    return str(url)


# ---------------------------------------------------------------------------------------- CLI
def serve(cfg: DictConfig, block: bool = True) -> gr.Blocks:
    """Load the checkpoint once, build the page, serve it (``block=False``: return at once)."""
    from maft.predict_run import cfg_value, load_predictor

    ckpt = cfg_value(cfg, "ckpt_path")
    if not ckpt or ckpt == "???":
        raise ConfigError(
            "ckpt_path is required: python -m maft.app ckpt_path=<MaftTask checkpoint> "
            "(after `make demo`: outputs/world/latest/checkpoints/maft/final.ckpt)"
        )
    if not Path(ckpt).is_file():
        raise CheckpointError(
            f"checkpoint not found: {ckpt} (the world demo's, "
            "outputs/world/latest/checkpoints/maft/final.ckpt, is written by `make demo`)"
        )
    if not gradio_available():
        raise ConfigError(INSTALL_HINT)
    predictor = load_predictor(cfg, str(ckpt))
    examples_dir = Path(cfg_value(cfg, "examples_dir", ".cache/maft/app_examples"))
    examples = example_rows(examples_dir) if cfg_value(cfg, "examples", True) else []
    demo = build_app(
        predictor, examples, checkpoint=str(ckpt), top_k=int(cfg_value(cfg, "top_k", 5))
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    launch(
        demo,
        host=str(cfg_value(cfg, "host", "127.0.0.1")),
        port=cfg_value(cfg, "port"),
        share=bool(cfg_value(cfg, "share", False)),
        block=block,
        allowed_paths=[p for p in (examples_dir.resolve(), docs_images()) if p.is_dir()],
    )
    return demo


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="app")
def _main(cfg: DictConfig) -> None:
    from maft.runner import cli_guard

    with cli_guard():
        serve(cfg)


def main() -> None:
    """Console-script entry point (`maft-app`); says how to install Gradio when it is missing."""
    if not gradio_available():
        print(f"maft: error: {INSTALL_HINT}", file=sys.stderr)
        sys.exit(2)
    _main()


__all__ = [
    "Outcome",
    "ProposalSet",
    "build_app",
    "example_rows",
    "frozen_available",
    "launch",
    "legend_html",
    "main",
    "parse_vocabulary",
    "proposal_at",
    "proposal_view",
    "read_image",
    "run_request",
    "segment",
    "serve",
]


if __name__ == "__main__":
    main()
