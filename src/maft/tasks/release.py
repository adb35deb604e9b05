"""Build maft tasks from the official FreeSeg / MAFT release files (docs/release.md).

``maft_task_from_release(path)`` gives a :class:`MaftTask` whose generator, text tower, fine-tuned
IP-CLIP tower and frozen tower carry the release's weights, every official key consumed or
ignored for a stated reason; ``proposal_task_from_release`` gives the stage-1 task with the same
generator. ``convert_release`` writes both as Lightning checkpoints that ``maft.eval`` /
``maft.predict`` / ``proposals_ckpt=`` take.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from maft.data.vocabulary import Vocabulary
from maft.errors import CheckpointError
from maft.models.release import (
    ReleaseMapping,
    ReleaseSettings,
    check_task_keys,
    map_release_state_dict,
    read_release_file,
    release_settings,
)

log = logging.getLogger(__name__)

#: The paper's cross-dataset rows of each released file (mIoU; A-847, A-150, PC-459, PC-59, PAS-20).
PAPER_ROWS: dict[str, dict[str, float]] = {
    "MAFT_Vitb.pt": {
        "ade20k_847": 10.25,
        "ade20k_150": 29.14,
        "pcontext_459": 12.85,
        "pcontext_59": 53.33,
        "pas_20": 90.44,
    },
    "MAFT_Vitl.pt": {
        "ade20k_847": 12.12,
        "ade20k_150": 32.05,
        "pcontext_459": 15.68,
        "pcontext_59": 58.01,
        "pas_20": 92.14,
    },
    "freeseg_model.pt": {
        "ade20k_847": 7.1,
        "ade20k_150": 17.9,
        "pcontext_459": 6.4,
        "pcontext_59": 34.4,
        "pas_20": 85.6,
    },
}


def paper_row(settings: ReleaseSettings, file_name: str) -> tuple[str, dict[str, float]] | None:
    """The paper row of a release file: by file name, else by kind and CLIP width."""
    if file_name in PAPER_ROWS:
        return file_name, PAPER_ROWS[file_name]
    if settings.kind == "freeseg":
        return "freeseg_model.pt", PAPER_ROWS["freeseg_model.pt"]
    width = settings.clip_arch["vision_cfg"]["width"]
    key = {768: "MAFT_Vitb.pt", 1024: "MAFT_Vitl.pt"}.get(width)
    return (key, PAPER_ROWS[key]) if key else None


def release_vocabulary(num_train_classes: int | None) -> Vocabulary:
    """The training vocabulary of a release: COCO-Stuff 171 (all seen) or its 156/15 split."""
    if num_train_classes == 156:
        return Vocabulary.from_benchmark("coco_stuff_171", split="zero_shot")
    if num_train_classes not in (None, 171):
        log.warning(
            "release trained on %s classes; using COCO-Stuff-171 as its training vocabulary",
            num_train_classes,
        )
    return Vocabulary.from_benchmark("coco_stuff_171", split=None)


def release_hparams(
    settings: ReleaseSettings, path: str | Path, vocabulary: Vocabulary | None = None
) -> dict[str, Any]:
    """MaftTask hyperparameters that rebuild the released model (no weights)."""
    vocab = vocabulary or release_vocabulary(settings.num_train_classes)
    row = paper_row(settings, Path(path).name)
    freeseg = settings.kind == "freeseg"
    return {
        "vocabulary": vocab.to_dict(),
        "clip": settings.clip_hparams(),
        "generator": dict(settings.generator),
        "ensemble": {"lambda_": settings.lambda_, "form": "code"},
        "classifier": "ip_clip",
        # FreeSeg's frozen row drops proposals with an empty mask at lambda 0; MAFT keeps all
        "drop_invalid": freeseg,
        "mask_align_corners": True,
        "eval_mode": "frozen_ip_clip" if freeseg else "maft",
        "release": {
            "file": Path(path).name,
            "kind": settings.kind,
            "settings_from": settings.source,
            "min_size_test": settings.min_size_test,
            "max_size_test": settings.max_size_test,
            "paper_row_name": row[0] if row else None,
            "paper_row": row[1] if row else None,
            "notes": list(settings.notes),
        },
    }


def maft_task_from_release(
    path: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    *,
    vocabulary: Vocabulary | None = None,
) -> tuple[Any, ReleaseSettings, ReleaseMapping]:
    """A MaftTask carrying the release's weights (strict: every task key filled, no key left)."""
    from maft.tasks.maft_task import MaftTask

    sd = read_release_file(path)
    settings = release_settings(sd, config)
    mapping = map_release_state_dict(sd, settings.kind, str(path))
    task = MaftTask(**release_hparams(settings, path, vocabulary))
    check_task_keys(task.state_dict(), mapping.state_dict, str(path))
    task.load_state_dict(mapping.state_dict, strict=True)
    for note in settings.notes:
        log.info("%s: %s", path, note)
    return task.eval(), settings, mapping


def proposal_task_from_release(
    path: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    *,
    clip_file: str | Path,
) -> Any:
    """The stage-1 ProposalTask of a release (its generator; text embeddings from ``clip_file``)."""
    sd = read_release_file(path)
    settings = release_settings(sd, config)
    mapping = map_release_state_dict(sd, settings.kind, str(path))
    prefix = "generator."
    gen_sd = {k[len(prefix) :]: v for k, v in mapping.state_dict.items() if k.startswith(prefix)}
    return _proposal_task(settings, gen_sd, clip_file, str(path))


def _proposal_task(
    settings: ReleaseSettings,
    gen_sd: Mapping[str, torch.Tensor],
    clip_file: str | Path,
    source: str,
) -> Any:
    """A ProposalTask of the release's settings carrying the generator weights ``gen_sd``."""
    from maft.tasks.proposal_task import ProposalTask

    vocab = release_vocabulary(settings.num_train_classes)
    clip = {"name": settings.clip_name, "pretrained": str(clip_file), "arch": settings.clip_arch}
    task = ProposalTask(
        vocabulary=vocab.to_dict(),
        clip=clip,
        generator=dict(settings.generator),
    )
    check_task_keys(task.generator.state_dict(), gen_sd, source)
    task.generator.load_state_dict(gen_sd, strict=True)
    return task


def _save(task: L.LightningModule, path: Path) -> None:
    """A Lightning-format checkpoint (``state_dict`` + plain ``hyper_parameters``), atomically."""
    ckpt = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def convert_release(
    path: str | Path,
    out_dir: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``maft.ckpt`` (MaftTask), ``proposals.ckpt`` (ProposalTask), ``clip_openai.pt``
    (the release's CLIP in OpenAI layout) and ``conversion.json`` (what went where) to
    ``out_dir``."""
    out = Path(out_dir)
    files = {
        "maft": out / "maft.ckpt",
        "proposals": out / "proposals.ckpt",
        "clip": out / "clip_openai.pt",
        "report": out / "conversion.json",
    }
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not overwrite:
        raise CheckpointError(
            f"refusing to overwrite {existing}; pass overwrite=True (--overwrite)"
        )
    out.mkdir(parents=True, exist_ok=True)
    task, settings, mapping = maft_task_from_release(path, config)
    clip_sd = {k: v.clone() for k, v in task.clip_model.state_dict().items()}
    if settings.kind == "maft":  # the text side's file carries the original visual tower
        for k, v in task.teacher_visual.state_dict().items():
            clip_sd["visual." + k] = v.clone()
    torch.save(clip_sd, files["clip"])
    _save(task, files["maft"])
    # the generator of the task just loaded: the release file is read once
    proposals = _proposal_task(settings, task.generator.state_dict(), files["clip"], str(path))
    _save(proposals, files["proposals"])
    report = {
        "source": str(path),
        "kind": settings.kind,
        "settings_from": settings.source,
        "generator": settings.generator,
        "clip_arch": settings.clip_arch,
        "consumed_keys": len(mapping.state_dict),
        "ignored_keys": {
            reason: sum(1 for r in mapping.ignored.values() if r == reason)
            for reason in sorted(set(mapping.ignored.values()))
        },
        "files": {k: str(v) for k, v in files.items()},
        "notes": settings.notes,
    }
    files["report"].write_text(json.dumps(report, indent=2), "utf-8")
    return report


__all__ = [
    "PAPER_ROWS",
    "convert_release",
    "maft_task_from_release",
    "paper_row",
    "proposal_task_from_release",
    "release_hparams",
    "release_vocabulary",
]
