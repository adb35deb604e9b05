"""Contrastive pretraining of the ``maft-world`` CLIP on the built-in world, and its zero-shot test.

Recipe: symmetric CLIP InfoNCE with multi-positive targets
(two pairs with the same class set are both positives), AdamW (betas 0.9/0.98, weight decay on
matrices), linear warm-up then cosine decay over a wall-clock budget or a step count, bf16 autocast,
horizontal flips. By default the training pool holds whole captioned scenes only, as OpenAI's CLIP
saw whole web images. Two options add region-level supervision that real CLIP never had:
``crop_frac`` zoom crops re-captioned from their label map, and ``mask_frac`` single regions
mask&cropped onto the mean colour as the frozen-CLIP baseline crops them ("a photo of a large
tiger."); both make the merge baseline stronger (README: world ablation). The token
embedding (6.3 M of the 7.8 M parameters; about 60 rows used) trains with sparse gradients.
Every caption names classes only; CLIP sees all 16 classes, seen and unseen, as real CLIP saw
"giraffe" in web captions. ``torch.set_num_threads`` is left to the caller.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from maft.models.clip import ClipNormalization, TextClassifier, build_clip, get_tokenizer
from maft.models.clip.merge import merge_subimages
from maft.world.scenes import (
    GENERATOR_VERSION,
    UNSEEN_CLASSES,
    WORLD_CLASSES,
    caption_from_label,
    generate_scene,
    make_caption,
    masked_crop,
    scene_rng,
    zoom_crop,
)

MODEL_NAME = "maft-world"
_CONFIG_FILE = Path(__file__).resolve().parents[1] / "models/clip/model_configs/maft-world.json"


@lru_cache(maxsize=1)
def world_tokenizer() -> Any:
    """The ``maft-world`` tokenizer (open_clip BPE, context 20), loaded once."""
    return get_tokenizer(MODEL_NAME)


@dataclass
class Pool:
    """In-memory image-caption pairs for pretraining."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    tokens: torch.Tensor  # long [N, context]
    keys: torch.Tensor  # long [N], bitmask of the classes a caption names


def _key(classes: list[int]) -> int:
    return sum(1 << int(c) for c in set(classes))


def build_pool(
    n_scenes: int,
    *,
    size: int = 64,
    seed: int = 0,
    crop_frac: float = 0.0,
    mask_frac: float = 0.0,
    crop_scale: tuple[float, float] = (0.35, 0.75),
    fill: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
    tokenizer: Any = None,
    progress: bool = False,
) -> Pool:
    """Generate ``n_scenes`` captioned scenes plus zoom crops and mask-crops (fractions of it)."""
    tokenizer = tokenizer or world_tokenizer()
    fill_u8 = np.round(np.asarray(fill) * 255).astype(np.uint8)
    crng = scene_rng(seed, "crop", 0)
    n_crop, n_mask = round(crop_frac * n_scenes), round(mask_frac * n_scenes)
    crop_src = set(crng.choice(n_scenes, n_crop, replace=n_crop > n_scenes).tolist())
    mask_src = set(crng.choice(n_scenes, n_mask, replace=n_mask > n_scenes).tolist())
    images, captions, keys = [], [], []
    for i in tqdm(range(n_scenes), desc="world CLIP pool", disable=not progress, unit="img"):
        sc = generate_scene(scene_rng(seed, "pool", i), size)
        images.append(sc.image)
        captions.append(sc.caption)
        keys.append(_key(sc.classes))
        if i in crop_src:
            img, lab = zoom_crop(crng, sc.image, sc.label, crop_scale)
            cap, present = caption_from_label(crng, lab)
            images.append(img)
            captions.append(cap)
            keys.append(_key(present))
        if i in mask_src:
            c = int(crng.choice(sc.classes))
            mask = sc.label == c
            images.append(masked_crop(sc.image, mask, fill_u8))
            captions.append(make_caption(crng, [WORLD_CLASSES[c]], [float(mask.mean()) * 2]))
            keys.append(_key([c]))
    imgs = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # [N, 3, S, S]
    return Pool(imgs, tokenizer(captions), torch.tensor(keys, dtype=torch.long))


# ---------------------------------------------------------------------------- training
def _optimizers(
    model: torch.nn.Module, lr: float, weight_decay: float, sparse_embedding: bool
) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on matrices only; with ``sparse_embedding`` the token embedding
    (6.3 M of 7.8 M parameters, ~60 rows used) gets a lazy ``SparseAdam`` on sparse gradients."""
    emb = model.token_embedding.weight if sparse_embedding else None
    model.token_embedding.sparse = sparse_embedding
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p is emb:
            continue
        skip = p.ndim < 2 or "positional_embedding" in name or "class_embedding" in name
        (no_decay if skip or "logit_scale" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opts: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, foreach=True)
    ]
    if emb is not None:
        opts.append(torch.optim.SparseAdam([emb], lr=lr, betas=(0.9, 0.98), eps=1e-6))
    return opts


def _lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 over ``warmup`` of training, then cosine decay to 0."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with multi-positive targets: pairs with equal class sets are positives.

    ``img``, ``txt``: L2-normalised ``[B, D]``; ``keys``: ``[B]`` class-set ids.
    """
    logits = scale * img @ txt.t()  # [B, B]
    pos = (keys[:, None] == keys[None, :]).to(logits.dtype)  # [B, B], symmetric, diagonal = 1
    target = pos / pos.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def _batch_loss(
    model: torch.nn.Module, norm: ClipNormalization, pool: Pool, idx: torch.Tensor,
    gen: torch.Generator, bf16: bool,
) -> torch.Tensor:  # fmt: skip
    """Contrastive loss of pool items ``idx`` with random horizontal flips."""
    device = next(model.parameters()).device
    x = pool.images[idx].to(device)  # [B, 3, S, S] uint8
    flip = torch.rand(idx.numel(), generator=gen) < 0.5
    x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        img = model.encode_image(norm.normalize(x), normalize=True)
        txt = model.encode_text(pool.tokens[idx].to(device), normalize=True)
    keys = pool.keys[idx].to(device)
    return contrastive_loss(img.float(), txt.float(), model.logit_scale.exp(), keys)


def train_clip(
    model: torch.nn.Module,
    norm: ClipNormalization,
    pool: Pool,
    *,
    seed: int = 0,
    budget_s: float | None = 150.0,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup: float = 0.1,
    bf16: bool = True,
    sparse_embedding: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place until the wall-clock ``budget_s`` or ``steps`` runs out."""
    if budget_s is None and steps is None:
        raise ValueError("give a wall-clock budget_s, a step count, or both")
    gen = torch.Generator().manual_seed(seed)
    opts = _optimizers(model, lr, weight_decay, sparse_embedding)
    model.train()
    n, step, t0, order, loss_val = pool.images.shape[0], 0, time.perf_counter(), None, float("nan")
    bar = tqdm(total=steps, desc="world CLIP", disable=not progress, unit="step")
    while True:
        p = max((time.perf_counter() - t0) / budget_s if budget_s else 0.0, step / (steps or 1e18))
        if p >= 1.0:
            break
        for g in (g for o in opts for g in o.param_groups):
            g["lr"] = lr * _lr_factor(p, warmup)
        if order is None or order.numel() < batch_size:
            order = torch.randperm(n, generator=gen)
        idx, order = order[:batch_size], order[batch_size:]
        loss = _batch_loss(model, norm, pool, idx, gen, bf16)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step, loss_val = step + 1, float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{opts[0].param_groups[0]['lr']:.1e}")
    bar.close()
    model.token_embedding.sparse = False
    model.eval()
    return {"steps": step, "train_s": time.perf_counter() - t0, "final_loss": loss_val}


# ---------------------------------------------------------------------------- zero-shot evaluation
def region_crops(image: torch.Tensor, label: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Mask&crop sub-images of the ground-truth regions of one scene via ``merge_subimages``.

    ``image``: normalised ``[3, S, S]``; ``label``: ``[S, S]`` -> ``[K, 3, S, S]`` for K classes.
    """
    masks = torch.stack([label == c for c in classes]).float()  # [K, S, S]
    logits = (masks * 2 - 1)[None] * 20.0  # [1, K, S, S], sigmoid > 0.5 exactly on the mask
    crops, _ = merge_subimages(image[None], logits, "mask_crop", size=image.shape[-1])
    return crops


@torch.no_grad()
def _embed(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    parts = [
        model.encode_image(x[i : i + batch].to(device)).float() for i in range(0, len(x), batch)
    ]
    return F.normalize(torch.cat(parts), dim=-1)


def _class_mean(pred: torch.Tensor, gt: torch.Tensor, classes: list[int]) -> float | None:
    """Mean over ``classes`` present in ``gt`` of per-class accuracy; None when none is present."""
    accs = [(pred[gt == c] == c).float().mean().item() for c in classes if (gt == c).any()]
    return float(np.mean(accs)) if accs else None


def _text_embeddings(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    """ViLD-template text classifier of the 16 classes; ``requires_grad`` flags left as found."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    emb = TextClassifier(model, tokenizer)(list(WORLD_CLASSES))  # [16, D]
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    return emb


@torch.no_grad()
def evaluate_zero_shot(
    model: torch.nn.Module,
    norm: ClipNormalization,
    tokenizer: Any = None,
    *,
    seed: int = 0,
    n_images: int = 320,
    n_scenes: int = 400,
    size: int | None = None,
) -> dict[str, Any]:
    """Zero-shot accuracy on held-out scenes, 16-way with the ViLD-template text classifier.

    Image level: single-class images (balanced over classes). Region level: every ground-truth
    region of multi-region scenes, mask&cropped. Class-mean accuracies, seen and unseen apart.
    """
    was_training = model.training
    model.eval()
    size = size or norm.image_size
    text = _text_embeddings(model, tokenizer or world_tokenizer())
    seen = [i for i, c in enumerate(WORLD_CLASSES) if c not in UNSEEN_CLASSES]
    unseen = [i for i, c in enumerate(WORLD_CLASSES) if c in UNSEEN_CLASSES]
    n_cls = len(WORLD_CLASSES)
    singles = [
        generate_scene(scene_rng(seed, "eval_image", i), size, 1, classes=[i % n_cls]).image
        for i in range(n_images)
    ]
    x = norm.normalize(torch.from_numpy(np.stack(singles)).permute(0, 3, 1, 2))  # [I, 3, S, S]
    img_gt = torch.arange(n_images) % n_cls
    img_pred = (_embed(model, x) @ text.t()).argmax(1).cpu()
    crops, reg_gt = [], []
    for i in range(n_scenes):
        rng = scene_rng(seed, "eval_region", i)
        sc = generate_scene(rng, size, int(rng.integers(2, 5)))
        x = norm.normalize(torch.from_numpy(sc.image).permute(2, 0, 1)[None])[0]  # [3, S, S]
        crops.append(region_crops(x, torch.from_numpy(sc.label), sc.classes))
        reg_gt += sc.classes
    reg_gt_t = torch.tensor(reg_gt)
    reg_pred = (_embed(model, torch.cat(crops)) @ text.t()).argmax(1).cpu()
    model.train(was_training)
    per_class = {
        c: round(float((reg_pred[reg_gt_t == i] == i).float().mean()), 4)
        if (reg_gt_t == i).any()
        else None
        for i, c in enumerate(WORLD_CLASSES)
    }
    return {
        "image_seen": _class_mean(img_pred, img_gt, seen),
        "image_unseen": _class_mean(img_pred, img_gt, unseen),
        "region_seen": _class_mean(reg_pred, reg_gt_t, seen),
        "region_unseen": _class_mean(reg_pred, reg_gt_t, unseen),
        "region_per_class": per_class,
        "n_images": n_images,
        "n_regions": len(reg_gt),
    }


# ---------------------------------------------------------------------------- entry points
def _resolved(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``pretrain_world_clip`` keyword arguments with defaults filled in (minus path and seed)."""
    bound = inspect.signature(pretrain_world_clip).bind_partial(**kwargs)
    bound.apply_defaults()
    skip = ("out_path", "seed", "progress", "device", "fp16")
    return {k: v for k, v in bound.arguments.items() if k not in skip}


def config_key(seed: int, **kwargs: Any) -> str:
    """Cache key of a pretrained world CLIP: seed, architecture JSON, generator version, settings.

    ``kwargs`` are ``pretrain_world_clip`` options; omitted ones count with their defaults.
    """
    blob = json.dumps(
        {
            "seed": seed,
            "arch": json.loads(_CONFIG_FILE.read_text("utf-8")),
            "generator_version": GENERATOR_VERSION,
            "kwargs": _resolved(kwargs),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrain_world_clip(
    out_path: str | Path,
    *,
    seed: int = 0,
    budget_s: float | None = 150.0,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup: float = 0.1,
    pool_size: int = 10_000,
    crop_frac: float = 0.0,
    mask_frac: float = 0.0,
    eval_images: int = 320,
    eval_scenes: int = 400,
    bf16: bool = True,
    sparse_embedding: bool = True,
    fp16: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain ``maft-world`` from scratch; save its state dict at ``out_path`` and a sidecar.

    The file loads back with ``build_clip("maft-world", pretrained=out_path)``. Returns the sidecar.
    """
    args = {k: v for k, v in locals().items() if k not in ("out_path", "seed", "progress")}
    key = config_key(seed, **args)
    out_path = Path(out_path)
    torch.manual_seed(seed)
    model, norm = build_clip(MODEL_NAME, device=device)
    tokenizer = world_tokenizer()
    t0 = time.perf_counter()
    pool = build_pool(
        pool_size,
        size=norm.image_size,
        seed=seed,
        crop_frac=crop_frac,
        mask_frac=mask_frac,
        fill=norm.mean,
        tokenizer=tokenizer,
        progress=progress,
    )
    pool_s = time.perf_counter() - t0
    stats = train_clip(
        model, norm, pool, seed=seed, budget_s=budget_s, steps=steps, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, warmup=warmup, bf16=bf16,
        sparse_embedding=sparse_embedding, progress=progress,
    )  # fmt: skip
    t1 = time.perf_counter()
    acc = evaluate_zero_shot(
        model, norm, tokenizer, seed=seed + 1000, n_images=eval_images, n_scenes=eval_scenes
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    torch.save({k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}, out_path)
    meta = {
        "model": MODEL_NAME,
        "file": out_path.name,
        "key": key,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "config": args,
        "pool_images": int(pool.images.shape[0]),
        "pool_s": round(pool_s, 2),
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()},
        "eval_s": round(time.perf_counter() - t1, 2),
        "torch_threads": torch.get_num_threads(),
        "accuracy": acc,
    }
    sidecar(out_path).write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
    return meta


def sidecar(path: str | Path) -> Path:
    """The JSON sidecar next to a world CLIP checkpoint (``x.pt`` -> ``x.json``)."""
    return Path(path).with_suffix(".json")


def ensure_world_clip(cache_dir: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Path of a pretrained world CLIP in ``cache_dir``; retrain only when the cache key differs.

    The file name carries the key, so runs with other settings (e.g. the quick variant) never
    overwrite each other's weights.
    """
    key = config_key(seed, **kwargs)
    path = Path(cache_dir) / f"{MODEL_NAME}-s{seed}-{key}.pt"
    meta_path = sidecar(path)
    if path.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text("utf-8")).get("key") == key:
                return path
        except json.JSONDecodeError:
            pass
    pretrain_world_clip(path, seed=seed, **kwargs)
    return path
