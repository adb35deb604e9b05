"""One MAFT training step against a step-by-step float64 reference (docs/method.md §3.1, §5.2-§5.4).

The reference recomputes ``MaftTask.compute_losses`` from the task's own sub-modules but by a
separate route: the frozen generator's mask logits -> bilinear upsample (``align_corners=True``)
-> sigmoid -> IP-CLIP student embeddings (``IPClipEncoder`` called directly on a float64 copy of
the student tower) -> ``softmax(100 cos)`` over the *seen* classes -> ``L_ma`` as plain loops
(soft IoU per seen GT class, min-max over proposals, SmoothL1 β = 1); ``L_dis`` between the
student and a float64 copy of the visual tower taken *before* the student was perturbed (the
original CLIP, i.e. the teacher); total with a ``dis_weight`` that is not 1.

The vocabulary has its unseen class in the middle (label id 1), so label ids and columns of the
training classes differ, and the student is moved well away from the teacher, so every term of
the loss is sensitive to the wiring it checks.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maft.data.vocabulary import Vocabulary
from maft.models.clip.ip_clip import IPClipEncoder
from maft.tasks.maft_task import MaftTask
from maft_testing import TINY_CLIP, TINY_GENERATOR

NAMES = ["sky", "water", "grass", "tree", "road"]
SEEN = [True, False, True, True, True]  # label id 1 ("water") is unseen: ids != columns
UNSEEN_ID = 1
IGNORE = 255
DIS_WEIGHT = 0.37  # not 1 (paper) and not 0.1 (code default): a dropped weight shows
CANVAS = 64
TOL = 1e-5  # float32 task vs float64 reference (observed: about 1e-6)


def _task() -> tuple[MaftTask, nn.Module]:
    """Tiny MaftTask whose student is perturbed, plus a copy of the original (teacher) tower."""
    torch.manual_seed(0)
    vocab = Vocabulary.from_names(NAMES, seen=SEEN)
    task = MaftTask(
        vocabulary=vocab.to_dict(),
        clip=dict(TINY_CLIP),
        generator=dict(TINY_GENERATOR),
        maft={"dis_weight": DIS_WEIGHT},
    )
    original = copy.deepcopy(task.clip_model.visual).eval()
    with torch.no_grad():  # as after some fine-tuning: student != frozen CLIP
        for _, p in task.trainable_parameters():
            p.add_(0.2 * torch.randn_like(p))
    return task.train(), original


@pytest.fixture(scope="module")
def setup() -> tuple[MaftTask, nn.Module]:
    """The tiny task (train mode) and its original visual tower, built once for the module."""
    return _task()


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Two 64x64 uint8 images with blocky labels of seen classes and ignore pixels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8, generator=g)
    seen_ids = torch.tensor([i for i, s in enumerate(SEEN) if s])
    blocks = seen_ids[torch.randint(0, len(seen_ids), (2, 8, 8), generator=g)]
    label = blocks.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)  # [2, 64, 64]
    label[0, :, 40:] = IGNORE  # padding-like ignore region
    label[1][torch.rand(CANVAS, CANVAS, generator=g) < 0.1] = IGNORE
    label[1, :16, :16] = 0  # image 1 surely holds "sky"; image 0 may not hold every class
    return {"image": images, "label": label}


def _smooth_l1(d: torch.Tensor) -> torch.Tensor:
    """Elementwise SmoothL1 with β = 1."""
    a = d.abs()
    return torch.where(a < 1, 0.5 * d * d, a - 0.5)


def _probs(emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """softmax over classes of 100 · cos(emb, text)."""
    return (100.0 * F.normalize(emb, dim=-1) @ text.t()).softmax(dim=-1)


def reference_losses(
    task: MaftTask, original: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """L_ma, L_dis and L = L_ma + w L_dis of one step in float64 (method §5), and the student."""
    images, label = batch["image"], batch["label"]
    vocab = Vocabulary.from_names(NAMES, seen=SEEN)
    seen_ids = [i for i, s in enumerate(SEEN) if s]
    seen_vocab = Vocabulary.from_names([NAMES[i] for i in seen_ids])
    text = task.text_embeddings(seen_vocab).detach().double()  # [S, D] training classes only
    assert text.shape[0] == len(seen_ids) < vocab.num_classes
    with torch.no_grad():  # the frozen generator, as the task runs it (float32)
        logits = task.generator(images.float(), text.float())["mask_logits"]
    soft = F.interpolate(
        logits.double(), size=images.shape[-2:], mode="bilinear", align_corners=True
    ).sigmoid()  # [B, N, H, W]
    mean = torch.tensor(task.norm.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(task.norm.std, dtype=torch.float64).view(1, 3, 1, 1)
    x = (images.double() / 255.0 - mean) / std
    size = int(TINY_CLIP["input_size"])
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    start = int(TINY_CLIP["start_layer"])
    student = IPClipEncoder(copy.deepcopy(task.clip_model.visual).double(), start_layer=start)
    teacher = IPClipEncoder(copy.deepcopy(original).double(), start_layer=start)

    a_c = _probs(student(x, soft), text)  # [B, N, S]
    diffs = []
    for b in range(images.shape[0]):
        masks = soft[b].flatten(1)  # [N, P]
        lab = label[b].flatten()
        for col, cid in enumerate(seen_ids):
            gt = (lab == cid).double()
            if gt.sum() == 0:
                continue
            inter = masks @ gt
            iou = inter / (gt.sum() + masks.sum(1) - inter + 1e-7)
            target = (iou - iou.min()) / (iou.max() - iou.min() + 1e-8)
            diffs.append(a_c[b, :, col] - target)
    l_ma = _smooth_l1(torch.cat(diffs)).mean()

    a_s = _probs(student(x), text)  # [B, S], student without masks
    with torch.no_grad():
        a_t = _probs(teacher(x), text)  # frozen original CLIP
    l_dis = _smooth_l1(a_s - a_t).mean()
    losses = {"loss_ma": l_ma, "loss_dis": l_dis, "loss": l_ma + DIS_WEIGHT * l_dis}
    return losses, student.visual


def test_losses_match_float64_reference(setup: tuple[MaftTask, nn.Module]) -> None:
    """compute_losses gives the reference's L_ma, L_dis and L_ma + w_dis L_dis (w_dis = 0.37)."""
    task, original = setup
    batch = _batch()
    with torch.no_grad():
        got = task.compute_losses(batch)
    ref = {k: float(v.detach()) for k, v in reference_losses(task, original, batch)[0].items()}
    assert ref["loss_dis"] > 1e-3, "student and teacher must differ for this test"
    assert ref["loss_ma"] > 1e-3
    assert task.recipe["dis_weight"] == DIS_WEIGHT
    for key in ("loss_ma", "loss_dis", "loss"):
        assert float(got[key]) == pytest.approx(ref[key], abs=TOL, rel=0), key


def test_gradients_match_float64_reference(setup: tuple[MaftTask, nn.Module]) -> None:
    """One backward of the total: the trainable parameters get the reference's gradients."""
    task, original = setup
    batch = _batch(seed=2)
    task.zero_grad(set_to_none=True)
    task.compute_losses(batch)["loss"].backward()
    ref, student = reference_losses(task, original, batch)
    ref["loss"].backward()
    ref_grads = dict(student.named_parameters())
    trainable = task.trainable_parameters()
    assert trainable
    for name, p in trainable:
        local = name.split("visual.", 1)[1]
        expected = ref_grads[local].grad
        assert expected is not None and p.grad is not None, name
        scale = float(expected.abs().max()) + 1e-6
        err = float((p.grad.double() - expected).abs().max())
        assert err <= 1e-3 * scale, f"{name}: grad error {err:.2e} vs scale {scale:.2e}"
    task.zero_grad(set_to_none=True)


def test_unseen_label_pixels_are_ignored(setup: tuple[MaftTask, nn.Module]) -> None:
    """Pixels of an unseen class contribute nothing: same losses as with those pixels ignored."""
    task, _ = setup
    batch = _batch(seed=3)
    with_unseen = {**batch, "label": batch["label"].clone()}
    with_unseen["label"][:, 16:32, 8:40] = UNSEEN_ID
    as_ignore = {**batch, "label": batch["label"].clone()}
    as_ignore["label"][:, 16:32, 8:40] = IGNORE
    with torch.no_grad():
        a = task.compute_losses(with_unseen)
        b = task.compute_losses(as_ignore)
    for key in ("loss_ma", "loss_dis", "loss"):
        assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-7), key
