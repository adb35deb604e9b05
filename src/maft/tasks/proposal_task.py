"""Stage-1 LightningModule: train the proposal generator on seen classes (docs/method.md §6.1).

Hyperparameters are plain data; the task builds the generator, the Hungarian set criterion and
the frozen CLIP text embeddings of the vocabulary (kept as a buffer; the CLIP model itself is not
kept). Validation runs semantic inference with A^p over the seen classes and logs seen mIoU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maft.checkpoints import check_keys
from maft.data.vocabulary import Vocabulary
from maft.errors import ConfigError
from maft.losses.matcher import MASK_LOSSES, MATCH_RESOLUTIONS, HungarianMatcher
from maft.losses.set_criterion import SetCriterion, targets_from_label
from maft.models.inference import postprocess_to_original, semantic_scores
from maft.models.proposals import build_generator, proposal_scores
from maft.schema import ClipCfg, CriterionCfg, ProposalOptimCfg
from maft.tasks.base import SegmentationTask, poly_schedule

#: Defaults of the stage-1 recipe: one source, maft.schema (CriterionCfg: FreeSeg's loss as the
#: released generator was trained; ProposalOptimCfg). ``optim`` also carries the stage's max_steps.
CRITERION_DEFAULTS: dict[str, Any] = dataclasses.asdict(CriterionCfg())
OPTIM_DEFAULTS: dict[str, Any] = {**dataclasses.asdict(ProposalOptimCfg()), "max_steps": None}
#: CLIP of the text embeddings: name, weights (null: random) and an architecture read from weights.
CLIP_DEFAULTS: dict[str, Any] = {"name": ClipCfg.name, "pretrained": None, "arch": None}
# Weight decay 0 (WEIGHT_DECAY_NORM, WEIGHT_DECAY_EMBED) for parameters of norm and embedding
# modules, as in FreeSeg's and Mask2Former's build_optimizer (FrozenBN has buffers only).
NO_DECAY_MODULES = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.Embedding,
)
# ...and for parameters whose own name contains one of these, per generator architecture. The
# released recipe exempts only Swin's position tables, so the released generator's void embedding
# (the official clip_adapter.non_object_embedding) and its deformable encoder's level_embed (plain
# Parameters) decay; the lite generator also exempts its void and pixel-decoder level embeddings.
NO_DECAY_NAMES: dict[str, tuple[str, ...]] = {
    "freeseg": ("relative_position_bias_table", "absolute_pos_embed"),
    "lite": ("void_embedding", "level_embed"),
}


def _plain(value: Any) -> Any:
    """Recursively turn mappings/sequences (e.g. OmegaConf containers) into dict/list."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _merge(defaults: dict[str, Any], given: Mapping | None, key: str) -> dict[str, Any]:
    """Defaults updated by `given`; unknown keys raise ConfigError naming them."""
    given = _plain(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"ProposalTask {key}: unknown keys {unknown}; allowed {sorted(defaults)}")
    return {**defaults, **given}


def _is_int(value: Any) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_criterion(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError for criterion values the matcher / set criterion cannot use."""
    if cfg["mask_loss"] not in MASK_LOSSES:
        raise ConfigError(
            f"ProposalTask criterion.mask_loss={cfg['mask_loss']!r}; use one of {list(MASK_LOSSES)}"
        )
    if cfg["match_resolution"] not in MATCH_RESOLUTIONS:
        raise ConfigError(
            f"ProposalTask criterion.match_resolution={cfg['match_resolution']!r}; use one of "
            f"{list(MATCH_RESOLUTIONS)} (used when num_points is null)"
        )
    points = cfg["num_points"]
    if points is not None and not (_is_int(points) and points >= 1):
        raise ConfigError(
            f"ProposalTask criterion.num_points={points!r}; use a positive int (points per mask) "
            "or null (every pixel)"
        )
    aux = cfg["aux_loss_layers"]
    if aux is not None and not _is_int(aux):
        raise ConfigError(
            f"ProposalTask criterion.aux_loss_layers={aux!r}; use an int n (aux predictions "
            "aux[:n] count, -1: all but the last) or null (all)"
        )
    costs = [cfg[k] for k in ("cost_class", "cost_mask", "cost_dice")]
    if any(c < 0 for c in costs) or not any(costs):
        raise ConfigError(
            f"ProposalTask criterion cost_class/cost_mask/cost_dice={costs}; use values >= 0, "
            "not all 0"
        )
    if cfg["eos_coef"] < 0:
        raise ConfigError(f"ProposalTask criterion.eos_coef={cfg['eos_coef']}; use a value >= 0")


@torch.no_grad()
def build_text_embeddings(
    name: str, pretrained: str | None, class_names: list[str], arch: dict | None = None
) -> torch.Tensor:
    """Frozen CLIP text embeddings [C, D] (L2-normalised, docs/method.md §2.2) of the vocabulary."""
    from maft.models.clip import TextClassifier, build_clip, get_tokenizer

    model, _ = build_clip(name, pretrained, model_cfg=arch)
    emb = TextClassifier(model, get_tokenizer(name))(class_names)
    return F.normalize(emb.detach().float().cpu(), dim=-1)


def _vocabulary(
    vocabulary: Mapping | None,
    class_names: Sequence[str] | None,
    seen: Sequence[bool] | None,
    ignore_index: int,
) -> Vocabulary:
    """The task's vocabulary from its dict form (``Vocabulary.to_dict``) or the older fields."""
    if vocabulary is not None:
        return Vocabulary.from_dict(_plain(vocabulary))
    names = [str(n) for n in _plain(class_names or [])]
    flags = [True] * len(names) if seen is None else [bool(s) for s in _plain(seen)]
    if not names or len(flags) != len(names):
        raise ConfigError(
            f"ProposalTask: need >= 1 class name and a seen flag per class (got {len(names)} "
            f"names, {len(flags)} flags)"
        )
    return Vocabulary(names, torch.tensor(flags, dtype=torch.bool), int(ignore_index))


class ProposalTask(SegmentationTask):
    """Mask2Former-style proposal generator trained with the set criterion on seen classes.

    Takes the vocabulary as MaftTask does (``Vocabulary.to_dict()``); ``class_names`` / ``seen``
    / ``ignore_index`` are the older form, still read from earlier checkpoints.
    """

    def __init__(
        self,
        *,
        vocabulary: dict | None = None,
        clip: dict | None = None,
        generator: dict | None = None,
        criterion: dict | None = None,
        optim: dict | None = None,
        class_names: list[str] | None = None,
        seen: list[bool] | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.vocab = _vocabulary(vocabulary, class_names, seen, ignore_index)
        if not bool(self.vocab.seen.any()):
            raise ConfigError("ProposalTask: the vocabulary has no seen class to train on")
        class_names = list(self.vocab.names)
        seen = [bool(f) for f in self.vocab.seen.tolist()]
        hparams = {
            "vocabulary": self.vocab.to_dict(),
            "clip": _merge(CLIP_DEFAULTS, clip, "clip"),
            "generator": _plain(generator or {}),
            "criterion": _merge(CRITERION_DEFAULTS, criterion, "criterion"),
            "optim": _merge(OPTIM_DEFAULTS, optim, "optim"),
        }
        self.save_hyperparameters(hparams)
        text = build_text_embeddings(
            hparams["clip"]["name"],
            hparams["clip"]["pretrained"],
            class_names,
            hparams["clip"]["arch"],
        )
        self.register_buffer("text_emb", text)  # [C, D], all classes of the vocabulary
        seen_t = torch.tensor(seen)
        self.register_buffer("seen_idx", seen_t.nonzero().flatten(), persistent=False)
        class_map = torch.full((len(seen),), -1, dtype=torch.int64)
        class_map[seen_t] = torch.arange(int(seen_t.sum()))
        self.register_buffer("class_map", class_map, persistent=False)  # full id -> seen id
        self.generator = self._build_generator(hparams["generator"], text.shape[1])
        self.criterion = self._build_criterion(hparams["criterion"], int(seen_t.sum()))

    @staticmethod
    def _build_generator(kwargs: dict, clip_dim: int) -> nn.Module:
        """Proposal generator from config; clip_dim defaults to the text embedding size."""
        if kwargs.get("clip_dim", clip_dim) != clip_dim:
            raise ConfigError(
                f"generator.clip_dim={kwargs['clip_dim']} but the CLIP text embeddings have size "
                f"{clip_dim}; remove generator.clip_dim or make it match"
            )
        return build_generator({**kwargs, "clip_dim": clip_dim})

    @staticmethod
    def _build_criterion(cfg: dict, num_classes: int) -> SetCriterion:
        """Hungarian matcher + set criterion over the seen classes (Mask2Former or MaskFormer)."""
        check_criterion(cfg)
        matcher = HungarianMatcher(
            cost_class=cfg["cost_class"],
            cost_mask=cfg["cost_mask"],
            cost_dice=cfg["cost_dice"],
            num_points=cfg["num_points"],
            mask_cost=cfg["mask_loss"],
            match_resolution=cfg["match_resolution"],
        )
        keys = ("class_weight", "mask_weight", "dice_weight", "eos_coef", "num_points")
        keys += ("oversample_ratio", "importance_sample_ratio", "deep_supervision")
        keys += ("mask_loss", "aux_loss_layers")
        return SetCriterion(num_classes, matcher, **{k: cfg[k] for k in keys})

    @property
    def seen_text_emb(self) -> torch.Tensor:
        """Text embeddings of the seen classes [C_seen, D] (training vocabulary)."""
        return self.text_emb[self.seen_idx]

    def forward(self, images: torch.Tensor, text_emb: torch.Tensor | None = None) -> dict:
        """Full generator output (with aux outputs) for the given or the seen vocabulary."""
        return self.generator(images, self.seen_text_emb if text_emb is None else text_emb)

    def proposals(
        self, images: torch.Tensor, text_emb: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Proposals for the next stage: mask_logits [B, N, h, w], class_logits [B, N, C+1].

        Uses the stored vocabulary (all classes, seen and unseen) unless `text_emb` [C, D] is given.
        """
        out = self.generator(images, self.text_emb if text_emb is None else text_emb)
        return {"mask_logits": out["mask_logits"], "class_logits": out["class_logits"]}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Set-criterion loss of one batch with per-class binary targets in seen index space."""
        targets = [
            targets_from_label(label, self.vocab.ignore_index, self.class_map)
            for label in batch["label"]
        ]
        losses = self.criterion(self(batch["image"]), targets)
        bs = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        for key in ("loss_ce", "loss_mask", "loss_dice"):
            self.log(f"train/{key}", losses[key], batch_size=bs)
        return losses["loss"]

    @torch.no_grad()
    def semantic_inference(
        self,
        images: torch.Tensor,
        valid_size: torch.Tensor | None = None,
        orig_size: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Seen-class label maps (benchmark ids) at the original size: argmax Σ_q A^p σ(M_q).

        The semantic output of docs/method.md §4.3.

        Upsampling uses ``align_corners=False`` as Mask2Former's training and inference do (the
        point-sampled losses follow that convention); FreeSeg's MAFT path uses True.
        """
        out = self(images)
        h, w = images.shape[-2:]
        scores = semantic_scores(
            proposal_scores(out["class_logits"]), out["mask_logits"], (h, w), align_corners=False
        )  # [B, S, H, W]
        b = images.shape[0]
        valid_size = torch.tensor([[h, w]] * b) if valid_size is None else valid_size
        orig_size = valid_size if orig_size is None else orig_size
        return [
            self.seen_idx[
                postprocess_to_original(
                    scores[i], tuple(valid_size[i].tolist()), tuple(orig_size[i].tolist())
                ).argmax(0)
            ]
            for i in range(b)
        ]  # per image [H0, W0]

    def default_eval_set(self) -> tuple[str, Vocabulary]:
        """The training vocabulary; predictions only ever use its seen classes."""
        return self.vocab.benchmark or "test", self.vocab

    def predict_labels(self, batch: dict[str, Any], vocab: Vocabulary) -> list[torch.Tensor]:
        """A^p-only label maps over the seen classes (``vocab`` must be the task's own)."""
        if vocab.names != self.vocab.names:
            raise ConfigError(
                "the proposal generator is evaluated on its own vocabulary only "
                f"({len(self.vocab)} classes), not on {vocab.benchmark or 'another vocabulary'}"
            )
        return self.semantic_inference(batch["image"], batch["valid_size"], batch["orig_size"])

    def log_results(self, stage: str, name: str, r: Mapping[str, Any], single: bool) -> None:
        """As the base class; without a split, ``miou_seen`` (the monitored key) is the mIoU."""
        super().log_results(stage, name, r, single)
        if "miou_seen" not in r:
            prefix = stage if single else f"{stage}/{name}"
            self.log(f"{prefix}/miou_seen", float(r["miou"]), prog_bar=True, sync_dist=False)

    def param_groups(self) -> list[dict]:
        """AdamW groups: backbone lr × backbone_lr_mult; no weight decay on norms/embeddings.

        Follows FreeSeg's build_optimizer: a parameter is a backbone one when its module's name
        contains "backbone", decay-free when its module is a norm or ``nn.Embedding`` or its name
        matches the architecture's ``NO_DECAY_NAMES``; shared parameters are counted once.
        """
        cfg = self.hparams.optim
        arch = self.hparams.generator.get("arch") or "lite"
        names = NO_DECAY_NAMES.get(arch, NO_DECAY_NAMES["lite"])
        groups: dict[tuple[bool, bool], list] = {}
        seen: set[int] = set()
        for mod_name, module in self.generator.named_modules():
            for p_name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                no_decay = isinstance(module, NO_DECAY_MODULES) or any(n in p_name for n in names)
                is_backbone = "backbone" in mod_name
                groups.setdefault((is_backbone, no_decay), []).append(param)
        return [
            {
                "params": params,
                "lr": cfg["lr"] * (cfg["backbone_lr_mult"] if is_backbone else 1.0),
                "weight_decay": 0.0 if no_decay else cfg["weight_decay"],
            }
            for (is_backbone, no_decay), params in sorted(groups.items())
        ]

    def configure_optimizers(self) -> dict:
        """AdamW + per-step poly schedule (power 0.9) to max_steps (docs/method.md §6.1)."""
        cfg = self.hparams.optim
        optimizer = torch.optim.AdamW(self.param_groups(), lr=cfg["lr"])
        max_steps = cfg["max_steps"] or int(self.trainer.estimated_stepping_batches)
        sched = poly_schedule(optimizer, max_steps, cfg["poly_power"])
        return {"optimizer": optimizer, "lr_scheduler": sched}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        """Load weights; another vocabulary size or architecture raises CheckpointError."""
        if strict:
            hint = (
                " (text_emb differs: the checkpoint was trained with another vocabulary size; "
                "build the task from the checkpoint's own hyperparameters, "
                "ProposalTask.load_from_checkpoint(path) without overrides)"
                if "text_emb" in state_dict
                and tuple(state_dict["text_emb"].shape) != tuple(self.text_emb.shape)
                else ""
            )
            check_keys(self.state_dict(), state_dict, "ProposalTask checkpoint", "the model", hint)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


__all__ = ["ProposalTask", "build_text_embeddings", "check_criterion"]
