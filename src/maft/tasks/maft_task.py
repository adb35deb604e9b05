"""MaftTask: mask-aware fine-tuning of CLIP's image encoder via IP-CLIP (docs/method.md §5).

Builds from plain hyperparameters (so checkpoints load with ``weights_only=True``):

- a frozen proposal generator (weights from a ProposalTask checkpoint, or carried in this task's
  own checkpoint once trained);
- an open_clip CLIP whose text tower is frozen and whose visual tower is the IP-CLIP *student*:
  only ``attn`` (in_proj, out_proj), ``ln_1``, ``ln_2`` of every block and ``ln_post`` train
  (docs/method.md §5.5);
- a frozen copy of the original visual tower: the self-distillation *teacher* (§5.3), also the
  encoder of the frozen-CLIP baselines.

Loss ``L = L_ma + w_dis · L_dis`` (§5.4). Evaluation runs the :class:`ZeroShotSegmenter` in one
of the modes ``maft`` (student IP-CLIP), ``frozen_ip_clip`` (teacher IP-CLIP) or ``frozen_merge``
(teacher on merged sub-images, §2.3).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maft.checkpoints import check_keys, wrong_kind
from maft.data.vocabulary import Vocabulary
from maft.errors import CheckpointError, ConfigError
from maft.losses.maft_losses import mask_aware_loss, self_distillation_loss
from maft.models.clip import TextClassifier, build_clip, get_tokenizer
from maft.models.clip.ip_clip import IPClipEncoder
from maft.models.proposals import build_generator
from maft.models.segmenter import ZeroShotSegmenter
from maft.schema import ClipCfg, EnsembleCfg, MaftRecipe, ModelCfg, filled
from maft.tasks.base import SegmentationTask, poly_schedule
from maft.tasks.common import EVAL_MODES, load_generator_weights, read_lightning_checkpoint

log = logging.getLogger(__name__)

#: Parameters of the visual tower that MAFT trains (docs/method.md §5.5); the rest stays frozen.
TRAINABLE_PATTERNS = {
    "maft": (
        r"^transformer\.resblocks\.\d+\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$",
        r"^transformer\.resblocks\.\d+\.ln_[12]\.(weight|bias)$",
        r"^ln_post\.(weight|bias)$",
    ),
    "all": (r".*",),
}

#: Defaults of the inference settings (one source: maft.schema.ModelCfg).
_MODEL = ModelCfg()


class MaftTask(SegmentationTask):
    """Stage 2 of MAFT plus the frozen-CLIP baselines, all evaluated through ZeroShotSegmenter."""

    def __init__(
        self,
        *,
        vocabulary: dict[str, Any],
        clip: dict[str, Any],
        generator: dict[str, Any],
        maft: dict[str, Any] | None = None,
        ensemble: dict[str, Any] | None = None,
        classifier: str = _MODEL.classifier,
        merge: str = _MODEL.merge,
        merge_variant: str = _MODEL.merge_variant,
        drop_invalid: bool = _MODEL.drop_invalid,
        mask_align_corners: bool = _MODEL.mask_align_corners,
        proposals_ckpt: str | None = None,
        eval_mode: str = "maft",
        generator_train_mode: bool | None = None,
        release: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vocab = Vocabulary.from_dict(vocabulary)
        self.recipe = filled(MaftRecipe, maft, "model.maft")
        ens = filled(EnsembleCfg, ensemble, "model.ensemble")
        self.lambda_, self.form = float(ens["lambda_"]), str(ens["form"])
        self.eval_mode = eval_mode
        self.clip_cfg = filled(ClipCfg, clip, "model.clip")

        model, self.norm = build_clip(
            clip["name"],
            clip.get("pretrained"),
            quick_gelu=clip.get("quick_gelu"),
            model_cfg=clip.get("arch"),
        )
        self.clip_model = model
        self.teacher_visual = copy.deepcopy(model.visual).requires_grad_(False).eval()
        self.generator = build_generator(generator).requires_grad_(False).eval()
        # The official MAFT run keeps the frozen generator in train mode (dropout 0.1 in the
        # deformable encoder and the interaction); None: as released for the released generator.
        if generator_train_mode is None:
            generator_train_mode = generator.get("arch") == "freeseg"
        self.generator_train_mode = bool(generator_train_mode)
        if proposals_ckpt:
            load_generator_weights(self.generator, proposals_ckpt, generator)
        self._set_trainable(self.recipe["trainable"])
        self._segmenters: dict[tuple, ZeroShotSegmenter] = {}
        self._set_ip_clip(self.clip_cfg["start_layer"], self.clip_cfg["input_size"])
        self.__dict__["text"] = TextClassifier(model, get_tokenizer(clip["name"]))
        self._train_cache: dict[tuple, torch.Tensor] = {}  # frozen text side: computed once

    def _set_ip_clip(self, start_layer: int, input_size: int) -> None:
        """IP-CLIP views of the student and the teacher from ``start_layer``, at ``input_size``."""
        self.start_layer, self.input_size = int(start_layer), int(input_size)
        # Not registered as submodules: both wrap clip_model's own weights (no duplicate keys).
        self.__dict__["student"] = IPClipEncoder.from_open_clip(
            self.clip_model.visual, self.start_layer
        )
        # The teacher runs IP-CLIP's mask-free path: positional grid resized to any input
        # (docs/method.md §3.6).
        self.__dict__["teacher"] = IPClipEncoder.from_open_clip(
            self.teacher_visual, self.start_layer
        )
        self._segmenters.clear()

    # ------------------------------------------------------------------ inference settings
    #: Settings a loaded task may change for inference (and where each lives in the hparams).
    INFERENCE_SETTINGS = (
        "lambda_",
        "form",
        "start_layer",
        "input_size",
        "classifier",
        "merge",
        "merge_variant",
        "drop_invalid",
        "mask_align_corners",
    )

    def configure_inference(self, **settings: Any) -> MaftTask:
        """Change inference settings (λ, form, classifier, merge op, ...) of this task.

        The hparams are updated with them, so reports and checkpoints state what ran; ``None``
        values keep the current setting. Unknown names raise ``ConfigError``.
        """
        unknown = sorted(set(settings) - set(self.INFERENCE_SETTINGS))
        if unknown:
            raise ConfigError(
                f"unknown inference settings {unknown}; valid: {list(self.INFERENCE_SETTINGS)}"
            )
        settings = {k: v for k, v in settings.items() if v is not None}
        ens = dict(self.hparams.get("ensemble") or {})
        for key, value in settings.items():
            if key in ("lambda_", "form"):
                ens[key] = value
            elif key in ("start_layer", "input_size"):
                self.clip_cfg[key] = int(value)
                self.hparams["clip"] = {**self.hparams["clip"], key: int(value)}
            else:
                self.hparams[key] = value
        if {"start_layer", "input_size"} & set(settings):
            self._set_ip_clip(self.clip_cfg["start_layer"], self.clip_cfg["input_size"])
        self.hparams["ensemble"] = {"lambda_": self.lambda_, "form": self.form, **ens}
        self.lambda_ = float(self.hparams["ensemble"]["lambda_"])
        self.form = str(self.hparams["ensemble"]["form"])
        return self

    # ------------------------------------------------------------------ construction helpers
    def _set_trainable(self, which: str) -> None:
        """Freeze everything, then unfreeze the visual parameters of docs/method.md §5.5."""
        if which not in TRAINABLE_PATTERNS:
            raise ConfigError(f"model.maft.trainable must be one of {sorted(TRAINABLE_PATTERNS)}")
        self.clip_model.requires_grad_(False)
        patterns = [re.compile(p) for p in TRAINABLE_PATTERNS[which]]
        for name, p in self.clip_model.visual.named_parameters():
            p.requires_grad_(any(pat.match(name) for pat in patterns))

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every trainable tensor (all inside the student visual tower)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> MaftTask:
        """Frozen parts stay in eval mode, except the generator when ``generator_train_mode``."""
        super().train(mode)
        self.generator.train(mode and self.generator_train_mode)
        self.teacher_visual.eval()
        self.clip_model.transformer.eval()
        return self

    def on_train_start(self) -> None:
        """Lightning keeps construction-time modes: put the student in train mode, the rest not."""
        self.train()

    # ------------------------------------------------------------------ text embeddings
    def text_embeddings(self, vocab: Vocabulary) -> torch.Tensor:
        """L2-normalised class embeddings ``[C, D]`` of ``vocab`` (frozen, cached)."""
        return self.text(vocab.names).to(self.device)

    def train_embeddings(self) -> torch.Tensor:
        """Text embeddings of the training classes (the seen ones) ``[S, D]``, cached per device."""
        key = ("train_emb", self.device)
        if key not in self._train_cache:
            emb = self.text_embeddings(self.vocab)[self.vocab.seen_indices.to(self.device)]
            self._train_cache[key] = emb
        return self._train_cache[key]

    def train_class_map(self, device: torch.device) -> torch.Tensor:
        """Label id -> column of the training classes (-1 unseen), cached per device."""
        key = ("class_map", device)
        if key not in self._train_cache:
            self._train_cache[key] = self.vocab.seen_class_map().to(device)
        return self._train_cache[key]

    # ------------------------------------------------------------------ training
    def clip_canvas(self, images: torch.Tensor) -> torch.Tensor:
        """0-255 canvas [B,3,H,W] -> CLIP-normalised [B,3,S,S] at the IP-CLIP size (method §3.1)."""
        x = self.norm.normalize(images.float())
        size = (self.input_size, self.input_size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """L_ma, L_dis and their weighted sum for one batch (docs/method.md §5.2-§5.4)."""
        images, label = batch["image"], batch["label"]
        t_train = self.train_embeddings()  # [S, D]
        with torch.no_grad():
            out = self.generator(images.float(), t_train)
            canvas = images.shape[-2:]
            soft = F.interpolate(
                out["mask_logits"],
                size=canvas,
                mode="bilinear",
                align_corners=self.hparams.mask_align_corners,
            ).sigmoid()  # [B, N, H, W]
        x = self.clip_canvas(images)
        emb = self.student(x, soft)  # [B, N, D]
        a_c = self.text.logits(emb.float(), t_train).softmax(-1)  # [B, N, S]
        class_map = self.train_class_map(label.device)
        l_ma = mask_aware_loss(a_c, soft, label, self.vocab.ignore_index, class_map=class_map)
        a_s = self.text.logits(self.student(x).float(), t_train).softmax(-1)  # [B, S]
        with torch.no_grad():
            a_t = self.text.logits(self.teacher(x).float(), t_train).softmax(-1)
        l_dis = self_distillation_loss(a_s, a_t)
        return {
            "loss_ma": l_ma,
            "loss_dis": l_dis,
            "loss": l_ma + self.recipe["dis_weight"] * l_dis,
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch)
        if not torch.isfinite(losses["loss"]):
            files = ", ".join(batch.get("file_name", []))
            raise FloatingPointError(
                f"non-finite MAFT loss at step {self.global_step} "
                f"(L_ma={losses['loss_ma'].item()}, L_dis={losses['loss_dis'].item()}); "
                f"batch files: {files}"
            )
        bs = batch["image"].shape[0]
        for k, v in losses.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=bs)
        return losses["loss"]

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.trainable_parameters():
            (no_decay if re.search(r"ln_\w*\.|ln_post", name) else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": float(self.recipe["weight_decay"])},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=float(self.recipe["lr"]))
        power = float(self.recipe["poly_power"]) if self.recipe["schedule"] == "poly" else 0.0
        sched = poly_schedule(opt, self.recipe["max_steps"], power, self.recipe["warmup_steps"])
        return {"optimizer": opt, "lr_scheduler": sched}

    # ------------------------------------------------------------------ evaluation
    def segmenter(self, mode: str | None = None) -> ZeroShotSegmenter:
        """The ZeroShotSegmenter of an evaluation mode (student or teacher; IP-CLIP or merge)."""
        mode = mode or self.eval_mode
        if mode not in EVAL_MODES:
            raise ConfigError(f"unknown evaluation mode {mode!r}; valid: {EVAL_MODES}")
        visual = self.clip_model.visual if mode == "maft" else self.teacher_visual
        classifier = self.hparams.merge if mode == "frozen_merge" else self.hparams.classifier
        hp = self.hparams
        key = (mode, classifier, hp.merge_variant, self.lambda_, self.form, hp.drop_invalid)
        key += (hp.mask_align_corners, self.start_layer, self.input_size)
        if key not in self._segmenters:
            self._segmenters[key] = ZeroShotSegmenter(
                self.generator,
                self.text,
                visual,
                self.norm,
                start_layer=self.start_layer,
                input_size=self.input_size,
                classifier=classifier,
                merge_variant=self.hparams.merge_variant,
                lambda_=self.lambda_,
                form=self.form,
                drop_invalid=self.hparams.drop_invalid,
                mask_align_corners=self.hparams.mask_align_corners,
            )
        return self._segmenters[key]

    @contextlib.contextmanager
    def evaluating(self, mode: str) -> Iterator[MaftTask]:
        """Evaluate in ``mode`` (maft | frozen_ip_clip | frozen_merge) inside the block."""
        if mode not in EVAL_MODES:
            raise ConfigError(f"unknown evaluation mode {mode!r}; valid: {EVAL_MODES}")
        before, self.eval_mode = self.eval_mode, mode
        try:
            yield self
        finally:
            self.eval_mode = before

    def default_eval_set(self) -> tuple[str, Vocabulary]:
        """The training vocabulary (seen and unseen classes), named by its benchmark."""
        return self.vocab.benchmark or "test", self.vocab

    def predict_labels(self, batch: dict[str, Any], vocab: Vocabulary) -> list[torch.Tensor]:
        """Label maps of the segmenter of the current evaluation mode over ``vocab``."""
        out = self.segmenter()(
            batch["image"],
            self.text_embeddings(vocab),
            None if vocab.seen_mask is None else vocab.seen_mask.to(self.device),
            batch["valid_size"],
            batch["orig_size"],
        )
        return out.labels

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> MaftTask:
        """Rebuild from a MaftTask checkpoint alone: no pretrained download, no stage-1 file."""
        ckpt = read_lightning_checkpoint(path, map_location)
        hp = dict(ckpt.get("hyper_parameters") or {})
        missing = {"vocabulary", "clip", "generator"} - set(hp)
        if missing:
            raise CheckpointError(
                f"{path}: not a MaftTask checkpoint (hyperparameters lack {sorted(missing)})"
            )
        error = wrong_kind(path, ckpt, ["maft"])
        if error is not None:  # e.g. a ProposalTask checkpoint, which has the same three keys
            raise error
        hp["clip"] = {**hp["clip"], "pretrained": None}
        hp["proposals_ckpt"] = None
        task = cls(**hp)
        check_keys(task.state_dict(), ckpt["state_dict"], path, "MaftTask")
        task.load_state_dict(ckpt["state_dict"])
        return task
