"""MaftTask: mask-aware fine-tuning of CLIP's image encoder via IP-CLIP (stage 2, spec §c, §d.2).

Builds from plain hyperparameters (so checkpoints load with ``weights_only=True``):

- a frozen proposal generator (weights from a ProposalTask checkpoint, or carried in this task's
  own checkpoint once trained);
- an open_clip CLIP whose text tower is frozen and whose visual tower is the IP-CLIP *student*:
  only ``attn`` (in_proj, out_proj), ``ln_1``, ``ln_2`` of every block and ``ln_post`` train (§c.4);
- a frozen copy of the original visual tower: the self-distillation *teacher* (§c.2), also the
  encoder of the frozen-CLIP baselines.

Loss ``L = L_ma + w_dis · L_dis`` (§c.3). Evaluation runs the :class:`ZeroShotSegmenter` in one
of the modes ``maft`` (student IP-CLIP), ``frozen_ip_clip`` (teacher IP-CLIP) or ``frozen_merge``
(teacher on merged sub-images, §a.2).
"""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from maft.data.vocabulary import Vocabulary
from maft.errors import CheckpointError, ConfigError
from maft.losses.maft_losses import mask_aware_loss, self_distillation_loss
from maft.metrics import ZeroShotSegMetrics
from maft.models.clip import TextClassifier, build_clip, get_tokenizer
from maft.models.clip.ip_clip import IPClipEncoder
from maft.models.proposals import build_generator
from maft.models.segmenter import ZeroShotSegmenter
from maft.tasks.common import (
    EVAL_MODES,
    load_generator_weights,
    poly_lambda,
    read_lightning_checkpoint,
    segmentation_targets,
)

log = logging.getLogger(__name__)

#: Parameters of the visual tower that MAFT trains (§c.4); everything else stays frozen.
TRAINABLE_PATTERNS = {
    "maft": (
        r"^transformer\.resblocks\.\d+\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$",
        r"^transformer\.resblocks\.\d+\.ln_[12]\.(weight|bias)$",
        r"^ln_post\.(weight|bias)$",
    ),
    "all": (r".*",),
}

DEFAULT_MAFT = {
    "dis_weight": 0.1,  # official code; the paper says 1.0 (§c.3, §g.1)
    "lr": 1e-5,
    "weight_decay": 1e-4,  # official code; the paper says 1e-5 (§g.2)
    "schedule": "poly",  # poly (power 0.9) or constant, after the warm-up
    "poly_power": 0.9,
    "warmup_steps": 0,
    "grad_clip": 0.01,  # global L2 norm over the trainable parameters
    "max_steps": 1000,
    "trainable": "maft",
}


class MaftTask(L.LightningModule):
    """Stage 2 of MAFT plus the frozen-CLIP baselines, all evaluated through ZeroShotSegmenter."""

    def __init__(
        self,
        *,
        vocabulary: dict[str, Any],
        clip: dict[str, Any],
        generator: dict[str, Any],
        maft: dict[str, Any] | None = None,
        ensemble: dict[str, Any] | None = None,
        classifier: str = "ip_clip",
        merge: str = "mask_crop",
        merge_variant: str = "zegformer",
        drop_invalid: bool = False,
        mask_align_corners: bool = True,
        proposals_ckpt: str | None = None,
        eval_mode: str = "maft",
        generator_train_mode: bool | None = None,
        release: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vocab = Vocabulary.from_dict(vocabulary)
        unknown = set(maft or {}) - set(DEFAULT_MAFT)
        if unknown:
            raise ConfigError(
                f"unknown model.maft keys {sorted(unknown)}; valid: {sorted(DEFAULT_MAFT)}"
            )
        self.recipe = {**DEFAULT_MAFT, **(maft or {})}
        ens = {"lambda_": 0.0, "form": "code", **(ensemble or {})}
        self.lambda_, self.form = float(ens["lambda_"]), str(ens["form"])
        self.eval_mode = eval_mode
        self.clip_cfg = dict(clip)

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
        self.start_layer = int(clip.get("start_layer", 0))
        self.input_size = int(clip.get("input_size", self.norm.image_size))
        self._set_trainable(self.recipe["trainable"])
        # Not registered as submodules: both wrap clip_model's own weights (no duplicate keys).
        self.__dict__["student"] = IPClipEncoder.from_open_clip(model.visual, self.start_layer)
        # The teacher runs IP-CLIP's mask-free path: positional grid resized to any input (§b.2).
        self.__dict__["teacher"] = IPClipEncoder.from_open_clip(
            self.teacher_visual, self.start_layer
        )
        self.__dict__["text"] = TextClassifier(model, get_tokenizer(clip["name"]))
        self._segmenters: dict[tuple, ZeroShotSegmenter] = {}
        self._train_cache: dict[tuple, torch.Tensor] = {}  # frozen text side: computed once
        self.eval_vocabularies: list[Vocabulary] = [self.vocab]
        self.eval_names: list[str] = [self.vocab.benchmark or "val"]
        self.results: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ inference settings
    #: Settings a loaded task may change for inference (and where each lives in the hparams).
    INFERENCE_SETTINGS = (
        "lambda_",
        "form",
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
            else:
                self.hparams[key] = value
        self.hparams["ensemble"] = {"lambda_": self.lambda_, "form": self.form, **ens}
        self.lambda_ = float(self.hparams["ensemble"]["lambda_"])
        self.form = str(self.hparams["ensemble"]["form"])
        return self

    # ------------------------------------------------------------------ construction helpers
    def _set_trainable(self, which: str) -> None:
        """Freeze everything, then unfreeze the visual parameters of §c.4."""
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
        """0-255 canvas [B,3,H,W] -> CLIP-normalised [B,3,S,S] at the IP-CLIP size (§b.1)."""
        x = self.norm.normalize(images.float())
        size = (self.input_size, self.input_size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """L_ma, L_dis and their weighted sum for one batch (§c.1-§c.3)."""
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
        fn = poly_lambda(
            int(self.recipe["max_steps"]),
            float(self.recipe["poly_power"]) if self.recipe["schedule"] == "poly" else 0.0,
            int(self.recipe["warmup_steps"]),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        """Clip the global L2 norm of the trainable parameters (official: full model, 0.01)."""
        clip = self.recipe["grad_clip"]
        if clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=float(clip), gradient_clip_algorithm="norm"
            )

    # ------------------------------------------------------------------ evaluation
    def segmenter(self, mode: str | None = None) -> ZeroShotSegmenter:
        """The ZeroShotSegmenter of an evaluation mode (student or teacher; IP-CLIP or merge)."""
        mode = mode or self.eval_mode
        if mode not in EVAL_MODES:
            raise ConfigError(f"unknown evaluation mode {mode!r}; valid: {EVAL_MODES}")
        visual = self.clip_model.visual if mode == "maft" else self.teacher_visual
        classifier = self.hparams.merge if mode == "frozen_merge" else self.hparams.classifier
        key = (mode, classifier, self.lambda_, self.form)
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

    def _start_metrics(self, vocabs: list[Vocabulary]) -> None:
        self._metrics = [
            ZeroShotSegMetrics(
                num_classes=v.num_classes,
                seen=v.seen if v.has_split else None,
                ignore_index=v.ignore_index,
            ).to(self.device)
            for v in vocabs
        ]

    def _eval_step(self, batch: dict[str, Any], idx: int, vocabs: list[Vocabulary]) -> None:
        vocab = vocabs[idx]
        seg = self.segmenter()
        out = seg(
            batch["image"],
            self.text_embeddings(vocab),
            vocab.seen.to(self.device) if vocab.has_split else None,
            batch["valid_size"],
            batch["orig_size"],
        )
        self.last_val_predictions = out.labels  # for the validation-panel callback
        for pred, target in segmentation_targets(out.labels, batch):
            self._metrics[idx].update(pred[None], target[None])

    def _finish(self, stage: str, names: list[str]) -> None:
        for name, metric in zip(names, self._metrics):
            r = metric.compute()
            prefix = f"{stage}/{name}" if len(names) > 1 else stage
            for k, v in r.items():
                if isinstance(v, float) and not math.isnan(v):
                    self.log(f"{prefix}/{k}", v, sync_dist=False)
            self.results[name] = r

    def on_validation_epoch_start(self) -> None:
        self._start_metrics([self.vocab])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, 0, [self.vocab])

    def on_validation_epoch_end(self) -> None:
        self._finish("val", ["val"])

    def on_test_epoch_start(self) -> None:
        self._start_metrics(self.eval_vocabularies)
        self.results = {}

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, self.eval_vocabularies)

    def on_test_epoch_end(self) -> None:
        self._finish("test", self.eval_names)

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
        hp["clip"] = {**hp["clip"], "pretrained": None}
        hp["proposals_ckpt"] = None
        task = cls(**hp)
        result = task.load_state_dict(ckpt["state_dict"], strict=False)
        bad = list(result.missing_keys) + list(result.unexpected_keys)
        if bad:
            raise CheckpointError(
                f"{path}: state dict does not match MaftTask: first keys {bad[:5]}"
            )
        return task
