"""``python -m maft.convert``: an official release file -> maft checkpoints (docs/release.md).

    python -m maft.convert MAFT_Vitb.pt --out converted/maft_vitb
    python -m maft.convert freeseg_model.pt --out converted/freeseg --config config.yaml

Writes ``maft.ckpt`` (a MaftTask: generator + CLIP + fine-tuned and frozen image towers; for
``maft.eval ckpt_path=`` and ``maft.predict ckpt_path=``), ``proposals.ckpt`` (the stage-1
ProposalTask: ``proposals_ckpt=`` of a new MAFT run), ``clip_openai.pt`` (the release's original
CLIP in OpenAI layout, which ``proposals.ckpt`` reads its text tower from) and ``conversion.json``
(where every key went).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from maft.errors import MaftError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="maft-convert",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("release", type=Path, help="freeseg_model.pt, MAFT_Vitb.pt or MAFT_Vitl.pt")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--config", type=Path, default=None, help="official resolved detectron2 yaml")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Convert; print the report; exit 0, or 2 with one clear line on a bad file or config."""
    args = parse_args(argv)
    from maft.tasks.release import convert_release

    try:
        report = convert_release(args.release, args.out, args.config, overwrite=args.overwrite)
    except MaftError as err:
        print(f"maft-convert: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
