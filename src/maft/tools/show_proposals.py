"""Frozen CLIP vs MAFT per proposal: mask + top-5 ``A^c`` classes side by side (the paper's figure).

    python scripts/show_proposals.py --ckpt run/checkpoints/maft/final.ckpt --image photo.jpg \\
        --vocabulary cat,sofa,wall --out fig.png [--num 4]

``--vocabulary`` is a comma-separated list of names or a text file (one name per line). Both
columns share the proposals of the checkpoint's generator; "frozen CLIP" is the original visual
tower through IP-CLIP, "MAFT" the fine-tuned one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="MaftTask checkpoint (stage 2)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--vocabulary", required=True, help="names 'a,b,c' or a text file")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--num", type=int, default=4, help="proposals shown (largest first)")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per proposal")
    p.add_argument("--short-side", type=int, default=640, help="test-time short side")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the figure and print the rows it shows; named errors exit with status 2."""
    from maft.errors import MaftError
    from maft.pictures import proposal_figure
    from maft.predictor import Predictor, as_vocabulary, load_image
    from maft.viz import save_png

    args = parse_args(argv)
    try:
        image = load_image(args.image)  # inputs first: fail fast, before loading the model
        vocab = as_vocabulary(args.vocabulary)
        predictor = Predictor.from_checkpoint(
            args.ckpt, device=args.device, short_side=args.short_side
        )
        picture, rows = proposal_figure(predictor, image, vocab, num=args.num, top_k=args.top_k)
    except MaftError as err:
        print(f"show_proposals: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    save_png(picture, args.out)
    for r in rows:
        frozen = ", ".join(f"{n} {p:.2f}" for n, p in r["frozen"])
        maft = ", ".join(f"{n} {p:.2f}" for n, p in r["maft"])
        print(f"proposal {r['index']} ({r['area_share']:.1%}): frozen [{frozen}] | MAFT [{maft}]")
    print(f"wrote {Path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
