"""Typed configs: the one place where maft's defaults live (Hydra structured configs).

Every setting a recipe can change is a field of a small dataclass here, with its default. The
YAML files under ``conf/`` only override these values; Hydra merges them onto the dataclasses, so
a wrong type (``data.batch_size=abc``) or an unknown key fails when the config is composed (also
under ``--cfg job``), with Hydra's message naming the key. The tasks read the same dataclasses to
fill in values a checkpoint does not carry (so a default never differs between a run and a
reloaded checkpoint).

Groups and what they configure: ``model.clip`` (:class:`ClipCfg`: CLIP and IP-CLIP),
``model.proposals`` (generator architecture; checked by ``build_generator``),
``model.proposal_train`` (:class:`ProposalRecipe`: stage 1), ``model.maft``
(:class:`MaftRecipe`: stage 2), ``model.ensemble`` (:class:`EnsembleCfg`), ``data``
(:class:`DataCfg` / :class:`WorldDataCfg`), ``split`` (:class:`SplitCfg`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from maft.errors import ConfigError


# ------------------------------------------------------------------------------------ model
@dataclass
class ClipCfg:
    """CLIP model (factory keys) and the IP-CLIP settings (docs/method.md, IP-CLIP)."""

    name: str = "ViT-B-16"  # open_clip architecture (or maft-tiny / maft-world)
    embed_dim: int = 512  # joint embedding size (the generator's class head matches it)
    pretrained: str | None = "openai"  # an open_clip tag, a local file, or null (random)
    quick_gelu: bool | None = None  # null: decided from the weights
    start_layer: int = 8  # IP-CLIP: first block with proposal tokens (L = 8 of 12)
    input_size: int = 480  # IP-CLIP canvas side
    # built-in world: pretrain_world_clip options (maft.world.pretrain) when no weights are given
    world_pretrain: dict[str, Any] | None = None
    arch: dict[str, Any] | None = None  # an architecture read from a state dict (release files)


@dataclass
class EnsembleCfg:
    """The λ-ensemble of A^p and A^c (docs/method.md, ensemble)."""

    lambda_: float = 0.0  # every released MAFT config uses 0 (pure A^c)
    form: str = "code"  # code: unseen A^p^(1-λ)·A^c^λ | eq1: unseen A^c^λ (supplementary Eq. 1)


@dataclass
class CriterionCfg:
    """Stage-1 matcher + set criterion; defaults: FreeSeg's loss as the released generator had.

    MaskFormer matcher with costs 1/20/5 on the prediction grid, CE (no-object 0.1) + focal x20 +
    dice x5 on full-resolution masks, aux predictions ``aux[:-1]``. Mask2Former's loss: mask_loss
    bce, num_points 12544, costs 2/5/5, match_resolution target, aux_loss_layers null.
    """

    cost_class: float = 1.0
    cost_mask: float = 20.0
    cost_dice: float = 5.0
    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 5.0
    eos_coef: float = 0.1
    mask_loss: str = "focal"  # bce | focal (matching cost and loss)
    num_points: int | None = None  # null: every pixel; an int: importance-sampled points
    match_resolution: str = "prediction"  # num_points null: match at the target | prediction grid
    oversample_ratio: float = 3.0  # point sampling only
    importance_sample_ratio: float = 0.75  # point sampling only
    deep_supervision: bool = True
    aux_loss_layers: int | None = -1  # aux_outputs[:n]; -1: all but the last; null: all


@dataclass
class ProposalOptimCfg:
    """Stage-1 optimiser (detectron2's AdamW groups, poly schedule, grad-norm clip)."""

    lr: float = 1.5e-4
    weight_decay: float = 1.5e-4
    backbone_lr_mult: float = 0.1
    poly_power: float = 0.9
    grad_clip: float | None = 0.01  # global L2 norm (the Trainer's gradient_clip_val)


@dataclass
class ProposalRecipe:
    """Stage 1: the proposal generator trained on the seen classes."""

    max_steps: int = 60000
    # images per step and device (official IMS_PER_BATCH: 2 in total); null: data.batch_size
    batch_size: int | None = 2
    criterion: CriterionCfg = field(default_factory=CriterionCfg)
    optim: ProposalOptimCfg = field(default_factory=ProposalOptimCfg)


@dataclass
class MaftRecipe:
    """Stage 2: MAFT fine-tuning; defaults: the released code (docs/method.md, recipes)."""

    max_steps: int = 1000
    dis_weight: float = 0.1  # official code; the paper says 1.0
    lr: float = 1.0e-5
    weight_decay: float = 1.0e-4  # official code; the paper says 1e-5
    schedule: str = "poly"  # poly (power poly_power) | constant, after the warm-up
    poly_power: float = 0.9
    warmup_steps: int = 0
    grad_clip: float | None = 0.01  # global L2 norm (the Trainer's gradient_clip_val)
    trainable: str = "maft"  # maft: attn + ln_1/ln_2 + ln_post | all
    # validate on data's validation split every val_every steps (and before the first step):
    # the curve of mIoU(seen) goes into the report; null: no validation during the stage
    val_every: int | None = None
    # which weights the stage ends with: last (the final step) | best (the highest validation
    # mIoU(seen) of the curve: the MAFT length chosen on seen classes only; needs val_every)
    keep: str = "last"


@dataclass
class ModelCfg:
    """The MAFT pipeline: generator + CLIP/IP-CLIP + λ-ensemble, and both training recipes."""

    clip: ClipCfg = field(default_factory=ClipCfg)
    proposals: dict[str, Any] = field(default_factory=dict)  # checked by build_generator
    proposal_train: ProposalRecipe = field(default_factory=ProposalRecipe)
    maft: MaftRecipe = field(default_factory=MaftRecipe)
    # ip_clip | mask | crop | mask_crop (the last three: frozen-CLIP merge baselines)
    classifier: str = "ip_clip"
    merge: str = "mask_crop"  # merge op of the frozen_merge evaluation row
    merge_variant: str = "zegformer"  # zegformer | zsseg (mean fill, bicubic)
    drop_invalid: bool = False  # MAFT keeps all proposals; zsseg drops empty ones
    mask_align_corners: bool = True  # mask-logit upsampling: MAFT/FreeSeg true, Mask2Former false
    # the frozen generator's mode during MAFT training: null = as released (train mode for the
    # released generator, eval for the lite one); true / false to force it
    generator_train_mode: bool | None = None
    ensemble: EnsembleCfg = field(default_factory=EnsembleCfg)


# ------------------------------------------------------------------------------------- data
@dataclass
class DataCfg:
    """A benchmark's DataModule: shared defaults; each conf/data file adds target and root."""

    _target_: str = MISSING
    _convert_: str = "all"
    benchmark: str = MISSING
    root: str = MISSING
    layout: str = "registration"  # or seen_only (zsseg / ZegFormer seen-only folders)
    batch_size: int = 16
    val_batch_size: int = 1
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = False
    drop_last: bool = True
    train_short_sides: list[int] = field(
        default_factory=lambda: [320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960]
    )
    train_max_long_side: int = 2560
    crop_size: int = 640
    color_jitter: bool = True
    hflip: bool = True
    test_short_side: int = 640
    test_max_long_side: int = 2560
    size_divisibility: int = 32
    image_pad_value: int = 128
    test_sets: list[Any] | None = None  # [{benchmark, root}] of the cross-dataset protocol
    max_train_images: int | None = None
    max_val_images: int | None = None
    train_split: str = "train"
    val_split: str = "val"  # validation during training (MAFT's val_every)
    test_split: str | None = None  # the evaluated split; null: val_split
    # validation labels of unseen classes become ignore (selection on seen classes only)
    val_seen_only: bool = False
    cache_dir: str = "${paths.cache_dir}"  # kept-image lists of zero-shot training
    # scan every split at setup (label values, image/label sizes; cached) and refuse evaluation
    # images without a label unless allowed
    scan: bool = True
    allow_missing_labels: bool = False


@dataclass
class WorldDataCfg(DataCfg):
    """The built-in world: scenes generated under the cache on first use (``maft.world``)."""

    n_train: int = 2000
    n_val: int = 500  # the test split ("val")
    n_heldout: int = 200  # the validation split ("heldout"), used with its unseen pixels ignored
    image_size: int = 64
    seed: int = 0
    progress: bool = True


@dataclass
class SplitCfg:
    """The seen/unseen split: ``zero_shot`` (benchmarks.json), ``from_file`` or null (no split).

    ``benchmark`` names the benchmark a split file belongs to (null: any benchmark).
    """

    name: str | None = None
    benchmark: str | None = None


@dataclass
class PathsCfg:
    """Data root, cache and the run's output folder."""

    data_root: str = "${oc.env:MAFT_DATA_ROOT,data}"
    cache_dir: str = "${oc.env:MAFT_CACHE_DIR,.cache/maft}"
    output_dir: str = "${hydra:runtime.output_dir}"


# ------------------------------------------------------------------------------------- runs
@dataclass
class RunCfg:
    """Keys every training / evaluation run has (``maft.train``, ``maft.eval``)."""

    task_name: str = MISSING
    experiment_name: str | None = None
    seed: int = 123
    paths: PathsCfg = field(default_factory=PathsCfg)
    data: Any = MISSING  # a DataCfg (typed by the data group's own schema)
    split: SplitCfg = field(default_factory=SplitCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    trainer: dict[str, Any] = field(default_factory=dict)  # Lightning Trainer arguments
    logger: dict[str, Any] | None = None
    callbacks: dict[str, Any] | None = None
    stages: list[str] = field(default_factory=list)
    evaluate: list[str] = field(default_factory=lambda: ["maft"])
    proposals_ckpt: str | None = None
    pictures: int = 0
    stage_trainer: dict[str, Any] = field(default_factory=dict)
    ckpt_path: str | None = None
    run_dir_suffix: str = ""
    latest_link: str | None = None
    release_config: str | None = None


@dataclass
class PredictCfg:
    """``maft.predict``: segment one's own images with one's own vocabulary."""

    task_name: str = "predict"
    seed: int = 123
    paths: PathsCfg = field(default_factory=PathsCfg)
    ckpt_path: str = MISSING
    image: Any = MISSING  # a file, a folder or a glob
    vocabulary: Any = MISSING  # a list of names or a text file
    output_dir: str = "${paths.output_dir}"
    overwrite: bool = False
    release_config: str | None = None
    device: str = "auto"
    mode: str = "maft"  # maft | frozen_ip_clip | frozen_merge
    short_side: int = 640
    ensemble: dict[str, Any] = field(default_factory=lambda: {"lambda_": None, "form": None})
    top_k: int = 5


@dataclass
class AppCfg:
    """``maft.app``: the web page."""

    task_name: str = "app"
    paths: PathsCfg = field(default_factory=PathsCfg)
    ckpt_path: str = MISSING
    device: str = "auto"
    mode: str = "maft"
    short_side: int = 640
    ensemble: dict[str, Any] = field(default_factory=lambda: {"lambda_": None, "form": None})
    top_k: int = 5
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    examples: bool = True
    examples_dir: str = "${paths.cache_dir}/app_examples"


# ------------------------------------------------------------------------------------ helpers
def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent): YAML files extend them by name."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunCfg)
    cs.store(name="predict_schema", node=PredictCfg)
    cs.store(name="app_schema", node=AppCfg)
    cs.store(group="data", name="data_schema", node=DataCfg)
    cs.store(group="data", name="world_data_schema", node=WorldDataCfg)


def filled(cls: type, values: Any, where: str) -> dict[str, Any]:
    """``values`` over the dataclass ``cls``'s defaults as a plain dict; unknown keys raise.

    For hyperparameters read back from checkpoints (older files may lack newer keys). Nested
    dataclass fields are filled the same way.
    """
    values = dict(values or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid: {sorted(names)}")
    out: dict[str, Any] = {}
    for name, f in names.items():
        if name in values:
            value = values[name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        nested = _dataclass_of(f)
        if nested is not None and value is not None:
            value = filled(nested, value if isinstance(value, dict) else vars(value), where)
        elif dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out[name] = value
    return out


def _dataclass_of(f: dataclasses.Field) -> type | None:
    """The dataclass type of a field (``X`` or ``Optional[X]``), else None."""
    for cls in (CriterionCfg, ProposalOptimCfg, EnsembleCfg, ClipCfg):
        if f.type in (cls, cls.__name__, f"{cls.__name__} | None"):
            return cls
    return None
