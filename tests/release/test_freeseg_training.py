"""Stage 1 with the released FreeSeg generator: the official optimiser recipe, a training step,
backbone initialisation from a detectron2 pickle and (slow) a run through the runner into MAFT."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from maft.config import CONFIG_DIR, compose
from maft.models.proposals.freeseg.backbone import DeepLabResNet
from maft.models.proposals.freeseg.layers import FrozenBatchNorm2d
from maft.tasks.proposal_task import CRITERION_DEFAULTS, OPTIM_DEFAULTS, ProposalTask
from maft_testing import quiet_trainer

NAMES = ["background", "red square", "blue square", "green square"]
SEEN = [True, True, True, False]
CLIP = {"name": "maft-tiny", "pretrained": None}  # random-weight tiny CLIP, embedding size 32
# The released architecture at test sizes (maft_dev-like widths; 10 queries, 2 decoder layers).
TINY_FREESEG: dict = {
    "arch": "freeseg",
    "depth": 50,
    "stem_out_channels": 16,
    "res2_out_channels": 32,
    "width_per_group": 8,
    "conv_dim": 32,
    "mask_dim": 32,
    "enc_layers": 1,
    "enc_dim_feedforward": 64,
    "interaction_dim": 32,
    "hidden_dim": 32,
    "dim_feedforward": 64,
    "dec_layers": 2,
    "num_queries": 10,
    "embed_hidden_dim": 32,
}
# The released stage-1 recipe (FreeSeg's mask2former_freeseg.yaml, resolved).
LR, WD, BACKBONE_MULT = 1.5e-4, 1.5e-4, 0.1
# A stage-1 + MAFT run of the tiny released generator on synthetic COCO-Stuff, as in the runner.
TINY_RUN = [
    "experiment=proposals_coco_zs",
    "model/proposals=freeseg_r101",
    "model/clip=tiny",
    *[f"model.proposals.{k}={v}" for k, v in TINY_FREESEG.items() if k != "arch"],
    "model.proposal_train.max_steps=3",
    "model.proposal_train.criterion.num_points=256",
    "stages=[proposals,maft]",
    "evaluate=[]",
    "model.maft.max_steps=1",
    "trainer=smoke",
    "logger=none",
    "callbacks=none",
    # tests/tasks' TINY_DATA
    "data.batch_size=2",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.train_short_sides=[64]",
    "data.crop_size=64",
    "data.test_short_side=64",
    "data.color_jitter=false",
]


def _task(generator: dict | None = None, **optim) -> ProposalTask:
    """ProposalTask on the tiny released generator with the official optimiser settings."""
    torch.manual_seed(0)
    return ProposalTask(
        class_names=NAMES,
        seen=SEEN,
        clip=CLIP,
        generator={**TINY_FREESEG, **(generator or {})},
        criterion={"num_points": 256},
        optim={"max_steps": 1, **optim},
    )


def _batch(n: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    """Images with two coloured rectangles of seen classes on background, unseen class ignored."""
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(n, size, size, dtype=torch.int64)
    e = size // 8
    label[:, e : 4 * e, e : 5 * e] = 1
    label[:, 5 * e : 7 * e, 3 * e : 7 * e] = 2
    label[-1, :e, : 2 * e] = 255  # an unseen region: ignored in training
    colours = torch.tensor([[90, 90, 90], [220, 40, 40], [40, 60, 220]], dtype=torch.float32)
    image = colours[label.clamp(max=2)].permute(0, 3, 1, 2)
    image = (image + 8 * torch.randn(image.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return {"image": image, "label": label}


def _trainer(tmp_path: Path, steps: int = 1) -> L.Trainer:
    # the recipe's grad_clip, as the runner passes it to the Trainer
    clip = {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "norm"}
    return quiet_trainer(tmp_path, steps, limit_val_batches=0, **clip)


def test_recipe_defaults_match_the_release() -> None:
    stage1 = compose([]).model.proposal_train
    official = {"lr": LR, "weight_decay": WD, "backbone_lr_mult": BACKBONE_MULT}
    official |= {"poly_power": 0.9, "grad_clip": 0.01}
    assert {k: OPTIM_DEFAULTS[k] for k in official} == official
    assert {k: stage1.optim[k] for k in official} == official
    assert stage1.max_steps == 60000
    losses = {"class_weight": 1.0, "mask_weight": 20.0, "dice_weight": 5.0, "eos_coef": 0.1}
    losses |= {"oversample_ratio": 3.0, "importance_sample_ratio": 0.75}
    losses |= {"deep_supervision": True}
    assert {k: CRITERION_DEFAULTS[k] for k in losses} == losses
    # real-scale default: FreeSeg's loss (MaskFormer matcher and criterion, mask_former_model.py)
    freeseg = {"cost_class": 1.0, "cost_mask": 20.0, "cost_dice": 5.0, "class_weight": 1.0}
    freeseg |= {"mask_weight": 20.0, "dice_weight": 5.0, "eos_coef": 0.1, "mask_loss": "focal"}
    freeseg |= {"num_points": None, "match_resolution": "prediction", "deep_supervision": True}
    freeseg |= {"aux_loss_layers": -1}
    assert {k: stage1.criterion[k] for k in freeseg} == freeseg
    assert {k: CRITERION_DEFAULTS[k] for k in freeseg} == freeseg  # the schema default
    released = OmegaConf.load(Path(CONFIG_DIR) / "model" / "proposals" / "freeseg_r101.yaml")
    assert released.freeze_at == 0 and released.backbone_weights is None
    assert released.enc_dropout == 0.1 and released.interaction_dropout == 0.1


def test_param_groups_follow_the_released_recipe() -> None:
    task = _task()
    gen = task.generator
    groups = task.param_groups()
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(gen.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(named) == len(by_id)

    def group(name: str) -> tuple[float, float]:
        return by_id[id(named[name])]

    backbone, head = LR * BACKBONE_MULT, LR
    # every backbone tensor is a conv weight (FrozenBN holds buffers only): lr x 0.1, decay
    assert all(
        by_id[id(p)] == (pytest.approx(backbone), WD)
        for n, p in named.items()
        if n.startswith("backbone.")
    )
    frozen_bn = [m for m in gen.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen_bn and not any(list(m.parameters()) for m in frozen_bn)
    no_decay = [
        "sem_seg_head.pixel_decoder.input_proj.0.1.weight",  # GroupNorm
        "sem_seg_head.pixel_decoder.adapter_1.norm.bias",  # GroupNorm of a ConvNorm
        "sem_seg_head.pixel_decoder.layer_1.norm.weight",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.norm1.weight",  # LayerNorm
        "sem_seg_head.interaction.layer_norm_q_1.weight",
        "sem_seg_head.interaction.layer_norm_k_1.bias",
        "sem_seg_head.predictor.decoder_norm.weight",
        "sem_seg_head.predictor.transformer_ffn_layers.1.norm.weight",
        "sem_seg_head.predictor.query_feat.weight",  # nn.Embedding
        "sem_seg_head.predictor.query_embed.weight",
        "sem_seg_head.predictor.level_embed.weight",
    ]
    # Plain Parameters and weights decay, as FreeSeg's build_optimizer gives them the default:
    # the deformable encoder's level_embed, the void (official non_object) embedding, the
    # interaction's layer scale.
    decay = [
        "sem_seg_head.pixel_decoder.transformer.level_embed",
        "void_embedding",
        "sem_seg_head.interaction.gamma",
        "sem_seg_head.interaction.attn.q_proj.weight",
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight",
        "sem_seg_head.pixel_decoder.adapter_1.weight",
        "sem_seg_head.pixel_decoder.mask_features.bias",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.bias",
        "sem_seg_head.predictor.transformer_cross_attention_layers.0.multihead_attn.in_proj_weight",
        "sem_seg_head.predictor.class_embed.layers.1.weight",
        "sem_seg_head.predictor.mask_embed.layers.2.bias",
    ]
    assert {n: group(n) for n in no_decay} == {n: (head, 0.0) for n in no_decay}
    assert {n: group(n) for n in decay} == {n: (head, WD) for n in decay}
    # the rule, parameter by parameter: 0 exactly for norm and embedding modules
    for mod_name, module in gen.named_modules():
        exempt = isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.Embedding)
        for p_name, p in module.named_parameters(recurse=False):
            assert by_id[id(p)][1] == (0.0 if exempt else WD), f"{mod_name}.{p_name}"

    opt = task.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    assert sorted((g["lr"], g["weight_decay"]) for g in opt.param_groups) == sorted(
        (g["lr"], g["weight_decay"]) for g in groups
    )


def test_dropout_is_active_in_training() -> None:
    task = _task().train()
    gen = task.generator
    dropouts = {n: m for n, m in gen.named_modules() if isinstance(m, nn.Dropout)}
    assert dropouts and all(".transformer.encoder.layers." in n for n in dropouts)
    assert all(m.p == 0.1 and m.training for m in dropouts.values())
    attn = gen.sem_seg_head.interaction.attn
    assert attn.dropout == 0.1 and attn.training
    images = _batch()["image"]
    with torch.no_grad():
        a, b = task(images)["mask_logits"], task(images)["mask_logits"]
        assert not torch.equal(a, b)  # dropout draws differ
        task.eval()
        c, d = task(images)["mask_logits"], task(images)["mask_logits"]
    torch.testing.assert_close(c, d, rtol=0, atol=0)


def test_training_steps_train_every_part_and_keep_frozen_bn(tmp_path: Path) -> None:
    # Two steps: the deformable attention's sampling offsets and attention weights start at 0,
    # so the first step gives the encoder's query side (level_embed) a zero gradient.
    task = _task(max_steps=2)
    before = {k: v.clone() for k, v in task.generator.state_dict().items()}
    trainer = _trainer(tmp_path, steps=2)
    batch = _batch()
    items = [{"image": i, "label": lab} for i, lab in zip(batch["image"], batch["label"])]
    trainer.fit(task, DataLoader(items, batch_size=2))
    assert trainer.global_step == 2
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and float(loss) > 0
    after = task.generator.state_dict()
    params = dict(task.generator.named_parameters())
    changed = {k for k in params if not torch.equal(before[k], after[k])}
    parts = {
        "backbone": ["backbone.stem.conv1.weight", "backbone.res5.2.conv3.weight"],
        "pixel decoder": [
            "sem_seg_head.pixel_decoder.transformer.level_embed",
            "sem_seg_head.pixel_decoder.input_proj.2.0.weight",
            "sem_seg_head.pixel_decoder.mask_features.weight",
        ],
        "interaction": [
            "sem_seg_head.interaction.gamma",
            "sem_seg_head.interaction.attn.k_proj.weight",
        ],
        "predictor": [
            "sem_seg_head.predictor.query_feat.weight",
            "sem_seg_head.predictor.class_embed.layers.1.weight",
            "sem_seg_head.predictor.mask_embed.layers.0.weight",
        ],
        "void": ["void_embedding"],
    }
    assert {p: [n for n in names if n not in changed] for p, names in parts.items()} == {
        p: [] for p in parts
    }
    assert changed == set(params)  # every trainable tensor received an update
    buffers = [k for k in after if k.startswith("backbone.") and k not in params]
    assert buffers and all(torch.equal(before[k], after[k]) for k in buffers)


def test_backbone_weights_initialise_the_backbone(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = DeepLabResNet(50, stem_out_channels=16, res2_out_channels=32, width_per_group=8)
    g = torch.Generator().manual_seed(1)
    for m in source.modules():
        if isinstance(m, FrozenBatchNorm2d):  # non-identity statistics, so the check can fail
            for buf in (m.weight, m.bias, m.running_mean, m.running_var):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    weights = {k: v.numpy().copy() for k, v in source.state_dict().items()}
    path = tmp_path / "R-test.pkl"  # detectron2 model-zoo layout
    with path.open("wb") as f:
        pickle.dump({"model": weights, "__author__": "test", "matching_heuristics": True}, f)

    loaded = _task({"backbone_weights": str(path)}).generator.backbone.state_dict()
    assert set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], torch.from_numpy(v)) for k, v in weights.items())
    scratch = _task().generator.backbone.state_dict()
    assert not torch.equal(scratch["stem.conv1.weight"], loaded["stem.conv1.weight"])


@pytest.mark.parametrize("override, expected", [(None, True), ("false", False), ("true", True)])
def test_maft_task_generator_mode_from_config(
    override: str | None, expected: bool, tmp_path: Path
) -> None:
    from maft import runner

    over = [*TINY_RUN, f"paths.cache_dir={tmp_path / 'cache'}"]
    if override is not None:
        over.append(f"model.generator_train_mode={override}")
    cfg = compose(over, output_dir=tmp_path / "run")
    task = runner.build_maft_task(cfg, runner.build_vocabulary(cfg), None)
    assert task.generator_train_mode is expected  # null: train mode for the released generator
    task.train()
    assert task.training and task.generator.training is expected
    assert task.generator.sem_seg_head.interaction.attn.training is expected
    assert not task.teacher_visual.training


# ------------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_runner_trains_released_generator_into_maft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maft import runner
    from maft.data.synthetic import write_benchmark

    root = tmp_path / "data"
    write_benchmark(root, "coco_stuff_171", n_images=3, size=(64, 64), seed=1)
    built: dict = {}
    modes: list[tuple[bool, bool]] = []  # (generator, interaction) training flags per MAFT step

    def capture(name: str) -> None:
        original = getattr(runner, name)

        def wrapper(*args, **kwargs):
            task = built[name] = original(*args, **kwargs)
            if name == "build_maft_task":
                step = task.training_step

                def recording_step(*a, **kw):
                    attn = task.generator.sem_seg_head.interaction.attn
                    modes.append((task.generator.training, attn.training))
                    return step(*a, **kw)

                task.training_step = recording_step
            return task

        monkeypatch.setattr(runner, name, wrapper)

    capture("build_proposal_task")
    capture("build_maft_task")
    over = [*TINY_RUN, f"paths.data_root={root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    cfg = compose(over, output_dir=tmp_path / "run")
    runner.run_train(cfg)

    trained = built["build_proposal_task"]
    ckpt = tmp_path / "run" / "checkpoints" / "proposals" / "final.ckpt"
    assert trained.hparams.generator["arch"] == "freeseg" and trained.trainer.global_step == 3
    groups = trained.trainer.optimizers[0].param_groups  # the recipe, as the runner passed it
    assert {(g["initial_lr"], g["weight_decay"]) for g in groups} == {
        (LR * BACKBONE_MULT, WD),  # the same product as the task's
        (LR, 0.0),
        (LR, WD),
    }
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    reloaded = ProposalTask.load_from_checkpoint(ckpt, weights_only=True)
    state, live = reloaded.state_dict(), trained.state_dict()
    assert set(state) == set(stored) == set(live)
    assert all(torch.equal(state[k], stored[k]) and torch.equal(live[k], stored[k]) for k in state)
    images = _batch(1, 64)["image"]
    with torch.no_grad():
        a, b = trained.eval().proposals(images), reloaded.eval().proposals(images)
    for key in ("mask_logits", "class_logits"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)

    maft = built["build_maft_task"]  # built from final.ckpt, then trained one MAFT step
    assert maft.trainer.global_step == 1
    gen_state = maft.generator.state_dict()
    assert all(torch.equal(gen_state[k], stored[f"generator.{k}"]) for k in gen_state)
    assert maft.generator_train_mode is True and modes == [(True, True)]
    maft.train()
    assert maft.generator.training and maft.generator.sem_seg_head.interaction.attn.training
    assert not maft.teacher_visual.training

    vocab = runner.build_vocabulary(cfg)
    fresh = runner.build_maft_task(cfg, vocab, str(ckpt))
    fresh_state = fresh.generator.state_dict()
    assert all(torch.equal(fresh_state[k], gen_state[k]) for k in gen_state)
    with torch.no_grad():
        c = fresh.eval().generator(images, reloaded.text_emb)
    torch.testing.assert_close(c["mask_logits"], b["mask_logits"], rtol=0, atol=0)
