"""ProposalTask: overfit synthetic rectangles with a Lightning Trainer, checkpoints, optimiser."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from maft.errors import CheckpointError, ConfigError
from maft.tasks.proposal_task import ProposalTask
from maft_testing import quiet_trainer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)  # the overfit test's trajectory is drawn from this seed


NAMES = ["background", "red square", "blue square", "green square"]
SEEN = [True, True, True, False]
COLORS = {0: (90, 90, 90), 1: (220, 40, 40), 2: (40, 60, 220), 3: (40, 200, 60)}


def _rectangles(n: int = 4, size: int = 32, seed: int = 0) -> list[dict]:
    """Images with one 8/16-px rectangle per class 1..3 on a grey background; class 3 -> ignore."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = torch.zeros(size, size, dtype=torch.int64)
        for c in (1, 2, 3):
            h, w = (8 * torch.randint(1, 3, (2,), generator=g)).tolist()
            y, x = (8 * torch.randint(0, (size - max(h, w)) // 8 + 1, (2,), generator=g)).tolist()
            label[y : y + h, x : x + w] = c
        image = torch.zeros(3, size, size)
        for c, color in COLORS.items():
            image[:, label == c] = torch.tensor(color, dtype=torch.float32)[:, None]
        image = (image + torch.randn(image.shape, generator=g) * 8).clamp(0, 255).to(torch.uint8)
        label[label == 3] = 255  # unseen class: ignore in training data
        size_t = torch.tensor([size, size])
        items.append(
            {
                "image": image,
                "label": label,
                "valid_size": size_t,
                "orig_size": size_t,
                "file_name": f"{i}.png",
            }
        )
    return items


def _task(generator: dict, **overrides) -> ProposalTask:
    torch.manual_seed(0)
    kwargs = {
        "class_names": NAMES,
        "seen": SEEN,
        "ignore_index": 255,
        "clip": {"name": "maft-tiny", "pretrained": None},
        "generator": generator,
        "criterion": {"num_points": None},
        "optim": {"lr": 2e-3, "weight_decay": 0.0, "backbone_lr_mult": 1.0, "max_steps": 40},
    }
    kwargs.update(overrides)
    return ProposalTask(**kwargs)


class _Record(L.Callback):
    """Train losses and the global gradient norm left after clipping, per step."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.cat(grads).norm()))


def _trainer(steps: int, callbacks: list, tmp_path) -> L.Trainer:
    return quiet_trainer(
        tmp_path,
        steps,
        check_val_every_n_epoch=10**6,
        callbacks=callbacks,
        gradient_clip_val=0.01,  # the recipe's grad_clip, as the runner passes it
        gradient_clip_algorithm="norm",
    )


def test_tiny_generator_overfits_rectangles(tiny_generator_kwargs, tmp_path) -> None:
    items = _rectangles()
    task = _task(tiny_generator_kwargs)
    record = _Record()
    trainer = _trainer(40, [record], tmp_path)
    trainer.fit(task, DataLoader(items, batch_size=4, shuffle=True))
    assert len(record.losses) == 40
    assert sum(record.losses[-5:]) / 5 < 0.5 * sum(record.losses[:5]) / 5
    # full-model clipping at 0.01: the gradient the optimiser used has norm 0.01
    assert max(record.grad_norms) == pytest.approx(0.01, rel=1e-3)
    metrics = trainer.validate(task, DataLoader(items, batch_size=4), verbose=False)[0]
    assert metrics["val/miou_seen"] > 90.0  # percent

    # checkpoint: plain hyperparameters, weights_only load, identical proposals after reload
    path = tmp_path / "proposals.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert not any(k.startswith("clip") or ".visual." in k for k in ckpt["state_dict"])
    reloaded = ProposalTask.load_from_checkpoint(path, weights_only=True).eval()
    images = torch.stack([it["image"] for it in items])
    with torch.no_grad():
        a, b = task.eval().proposals(images), reloaded.proposals(images)
    assert a["class_logits"].shape == (4, 6, len(NAMES) + 1)  # full vocabulary + void
    torch.testing.assert_close(a["mask_logits"], b["mask_logits"])
    torch.testing.assert_close(a["class_logits"], b["class_logits"])

    fewer = _task(tiny_generator_kwargs, class_names=NAMES[:3], seen=SEEN[:3])
    with pytest.raises(CheckpointError, match="vocabulary"):
        fewer.load_state_dict(ckpt["state_dict"])
    other = _task({**tiny_generator_kwargs, "num_queries": 4})
    with pytest.raises(CheckpointError, match="query"):
        other.load_state_dict(ckpt["state_dict"])


def test_vocabularies_of_forward_and_proposals(tiny_generator_kwargs) -> None:
    task = _task(tiny_generator_kwargs).eval()
    images = torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8)
    assert task(images)["class_logits"].shape[-1] == 3 + 1  # seen classes + void
    assert task.proposals(images)["class_logits"].shape[-1] == 4 + 1  # all classes + void
    custom = task.proposals(images, task.text_emb[:2])
    assert custom["class_logits"].shape == (1, 6, 3) and custom["mask_logits"].shape[-1] == 8
    torch.testing.assert_close(task.text_emb.norm(dim=-1), torch.ones(4))
    assert set(task.state_dict()) == {"text_emb"} | {
        f"generator.{k}" for k in task.generator.state_dict()
    }


def test_param_groups_and_poly_schedule(tiny_generator_kwargs) -> None:
    task = _task(
        tiny_generator_kwargs,
        optim={"lr": 1e-3, "weight_decay": 0.05, "max_steps": 10, "poly_power": 0.9},
    )
    groups = task.param_groups()
    by_param = {id(p): g for g in groups for p in g["params"]}
    gen = task.generator
    assert sum(len(g["params"]) for g in groups) == sum(
        1 for p in gen.parameters() if p.requires_grad
    )
    conv = next(p for n, p in gen.backbone.named_parameters() if n.endswith("conv1.0.weight"))
    assert by_param[id(conv)]["lr"] == pytest.approx(1e-4)
    assert by_param[id(conv)]["weight_decay"] == 0.05
    assert by_param[id(gen.void_embedding)]["weight_decay"] == 0.0
    assert by_param[id(gen.decoder.query_feat.weight)]["weight_decay"] == 0.0
    assert by_param[id(gen.decoder.decoder_norm.weight)]["weight_decay"] == 0.0
    linear = gen.decoder.class_embed.layers[0].weight
    assert by_param[id(linear)] == {**by_param[id(linear)], "lr": 1e-3, "weight_decay": 0.05}

    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    seen_lrs = []
    for _ in range(11):
        seen_lrs.append(opt.param_groups[-1]["lr"] / groups[-1]["lr"])
        opt.step()
        sched.step()
    expected = [(1 - k / 10) ** 0.9 for k in range(11)]
    assert seen_lrs == pytest.approx(expected, abs=1e-9)


def test_config_errors(tiny_generator_kwargs) -> None:
    with pytest.raises(ConfigError, match="num_point"):
        _task(tiny_generator_kwargs, criterion={"num_point": 10})
    with pytest.raises(ConfigError, match="clip_dim"):
        _task({**tiny_generator_kwargs, "clip_dim": 16})
    with pytest.raises(ConfigError, match="seen"):
        _task(tiny_generator_kwargs, seen=[False] * 4)
