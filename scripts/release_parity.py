"""Print how closely maft reproduces the official forward on a golden release set, stage by stage.

    python scripts/release_parity.py --golden ../shared/reference/golden/release/maft_dev

Loads ``weights.pth`` + ``config.yaml`` through ``Predictor.from_official``, runs ``image.png``
with the set's class names, and reports max |ours - official| / max |official| for every stage
the golden ``outputs.pt`` holds. Prints one JSON object and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from maft.data.vocabulary import Vocabulary
from maft.predictor import Predictor, load_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--golden", type=Path, required=True, help="a golden set folder (maft_dev)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def _rel(ours: torch.Tensor, official: torch.Tensor) -> float:
    """max |ours - official| / max |official|."""
    scale = float(official.abs().max().clamp_min(1e-12))
    return float((ours.float() - official.float()).abs().max()) / scale


def parity(golden: Path) -> dict[str, float]:
    """Relative error of every stage of the golden set (masks: number of differing cells)."""
    gold = torch.load(golden / "outputs.pt", weights_only=False)
    inputs = torch.load(golden / "inputs.pt", weights_only=False)
    pred = Predictor.from_official(golden / "weights.pth", golden / "config.yaml")
    vocab = Vocabulary.from_names(
        list(inputs["class_names"]), [bool(s) for s in inputs["seen_flags"]]
    )
    batch = pred.preprocess(load_image(golden / "image.png"))
    images, valid = batch["image"].float(), batch["valid_size"]
    text = pred.task.text_embeddings(vocab)
    gen = pred.task.generator
    with torch.no_grad():
        f = gen.features(images, gen.vocabulary(text), valid)
        out = pred.segmenter()(images, text, vocab.seen, valid, batch["orig_size"])
    head = f["predictor"]
    rows = {f"backbone_{k}": _rel(v, gold[f"backbone_{k}"]) for k, v in f["backbone"].items()}
    rows["pd_mask_features"] = _rel(f["pd_mask_features"], gold["pd_mask_features"])
    rows["mask_features"] = _rel(f["mask_features"], gold["mask_features"])
    for i in range(3):
        rows[f"multi_scale_features_{i}"] = _rel(
            f["multi_scale_features"][i], gold[f"multi_scale_features_{i}"]
        )
    rows["pred_logits"] = _rel(head["pred_logits"], gold["pred_logits"])
    rows["pred_masks"] = _rel(head["pred_masks"], gold["pred_masks"])
    rows["dec_attn_mask_cells_differing"] = float(
        sum(int((a != b).sum()) for a, b in zip(head["attn_masks"], gold["dec_attn_masks"]))
    )
    rows["A_c"] = _rel(out.clip_probs[0], gold["A_c"])
    rows["A_p"] = _rel(out.proposal_probs[0], gold["A_p_freeseg_formula"])
    rows["sem_seg_scores"] = _rel(out.scores[0], gold["sem_seg_scores"])
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print (and write) the parity table; exit 0."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"golden": str(args.golden), "threads": args.threads, "errors": parity(args.golden)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
