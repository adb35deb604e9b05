"""MaftTask: what trains (docs/method.md §5.5), losses, checkpoint round trip, errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from maft.data.vocabulary import Vocabulary
from maft.errors import CheckpointError, ConfigError
from maft.tasks.maft_task import MaftTask

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
VOCAB = Vocabulary.from_names(["sky", "grass", "water", "road", "sand"], seen=[1, 1, 0, 1, 1])


def tiny_kwargs(**maft) -> dict:
    clip = yaml.safe_load((CONF / "clip" / "tiny.yaml").read_text())
    gen = yaml.safe_load((CONF / "proposals" / "tiny.yaml").read_text())
    gen["clip_dim"] = clip["embed_dim"]
    return {
        "vocabulary": VOCAB.to_dict(),
        "clip": clip,
        "generator": gen,
        "maft": {"max_steps": 5, "lr": 1e-2, "weight_decay": 0.0, "grad_clip": 0.0, **maft},
    }


def make_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 5, (2, 64, 64), generator=g)
    label[label == 2] = 255  # unseen pixels are ignore in training
    return {
        "image": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g),
        "label": label,
        "valid_size": torch.tensor([[64, 64], [64, 48]]),
        "orig_size": torch.tensor([[64, 64], [60, 40]]),
        "file_name": ["a.png", "b.png"],
    }


SPEC_TRAINABLE = ("attn.in_proj_", "attn.out_proj.", "ln_1.", "ln_2.", "ln_post.")


def test_one_step_changes_exactly_the_spec_parameters() -> None:
    torch.manual_seed(0)
    task = MaftTask(**tiny_kwargs())
    before = {k: v.detach().clone() for k, v in task.state_dict().items()}
    trainable = {n for n, _ in task.trainable_parameters()}
    assert trainable and all(n.startswith("clip_model.visual.") for n in trainable)
    assert all(any(s in n for s in SPEC_TRAINABLE) for n in trainable)
    depth = len(task.clip_model.visual.transformer.resblocks)
    assert len(trainable) == depth * 8 + 2  # in_proj w/b, out_proj w/b, ln_1 w/b, ln_2 w/b; ln_post
    opt = task.configure_optimizers()["optimizer"]
    task.train()
    loss = task.compute_losses(make_batch())["loss"]
    loss.backward()
    opt.step()
    after = task.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable_keys = {n for n in trainable}
    assert changed == trainable_keys, changed ^ trainable_keys
    # the teacher keeps the original weights, the student moved away from them
    assert torch.equal(
        after["teacher_visual.ln_post.weight"], before["clip_model.visual.ln_post.weight"]
    )


def test_losses_are_finite_and_distillation_starts_at_zero() -> None:
    torch.manual_seed(0)
    task = MaftTask(**tiny_kwargs())
    losses = task.compute_losses(make_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_dis"].item() < 1e-8  # student == teacher before training
    assert losses["loss"].requires_grad


def test_generator_and_teacher_stay_in_eval_mode() -> None:
    task = MaftTask(**tiny_kwargs())
    task.train()
    assert not task.generator.training and not task.teacher_visual.training
    assert task.clip_model.visual.training


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = MaftTask(**tiny_kwargs())
    opt = task.configure_optimizers()["optimizer"]
    task.compute_losses(make_batch())["loss"].backward()
    opt.step()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(task)
    path = tmp_path / "maft.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # plain hyperparameters only
    assert ckpt["hyper_parameters"]["vocabulary"]["names"] == VOCAB.names
    again = MaftTask.from_checkpoint(path)
    batch = make_batch(1)
    task.eval(), again.eval()
    for mode in ("maft", "frozen_ip_clip", "frozen_merge"):
        a = task.segmenter(mode)(batch["image"], task.text_embeddings(VOCAB), VOCAB.seen)
        b = again.segmenter(mode)(batch["image"], again.text_embeddings(VOCAB), VOCAB.seen)
        assert torch.equal(a.clip_probs, b.clip_probs)
        assert all(torch.equal(x, y) for x, y in zip(a.labels, b.labels))
    text = task.text_embeddings(VOCAB)
    trained = task.segmenter("maft")(batch["image"], text, VOCAB.seen)
    frozen = task.segmenter("frozen_ip_clip")(batch["image"], text, VOCAB.seen)
    assert not torch.equal(trained.clip_probs, frozen.clip_probs)


def test_bad_inputs_raise_named_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dis_wieght"):
        MaftTask(**tiny_kwargs(dis_wieght=1.0))
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        MaftTask.from_checkpoint(tmp_path / "missing.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, foreign)
    with pytest.raises(CheckpointError, match="not a MaftTask checkpoint"):
        MaftTask.from_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="stage1.ckpt"):
        MaftTask(**tiny_kwargs(), proposals_ckpt=str(tmp_path / "stage1.ckpt"))


def test_non_finite_loss_names_step_and_files() -> None:
    task = MaftTask(**tiny_kwargs())
    batch = make_batch()
    with torch.no_grad():
        task.clip_model.visual.ln_post.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"step 0.*a\.png, b\.png"):
        task.training_step(batch, 0)
