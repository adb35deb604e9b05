"""The whole released model against the official forward, stage by stage (golden/release).

``Predictor.from_official`` builds the model from the release-format file and the official
resolved config; the test image goes through our own loading, resizing, padding, generator,
IP-CLIP, ensemble and post-processing, and every intermediate the golden set holds is compared
within the tolerances of its README (1e-4 of the tensor's max-abs for backbone/decoder tensors,
1e-5 for CLIP tensors, exact masks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from release_helpers import assert_close_rel, golden_kwargs

from maft.data.vocabulary import Vocabulary
from maft.errors import CheckpointError, ConfigError
from maft.predictor import Predictor, load_image

REL_NET = 1e-4
REL_CLIP = 1e-5


def _vocab(inputs: dict) -> Vocabulary:
    return Vocabulary.from_names(
        list(inputs["class_names"]), [bool(s) for s in inputs["seen_flags"]]
    )


def _run(pred: Predictor, image: Path, vocab: Vocabulary, seen: torch.Tensor | None) -> dict:
    """Every stage of one forward, through the predictor's own preprocessing."""
    img = load_image(image)
    batch = pred.preprocess(img)
    task = pred.task
    text = task.text_embeddings(vocab)
    gen = task.generator
    vocab_emb = gen.vocabulary(text)
    images, valid, orig = batch["image"].float(), batch["valid_size"], batch["orig_size"]
    with torch.no_grad():
        feats = gen.features(images, vocab_emb, valid)
        seg = pred.segmenter()
        out = seg(images, text, seen, valid, orig)
        clip_in = seg.clip_input(images, valid)
    return {
        "img": img,
        "batch": batch,
        "normalized": gen.normalize(images, valid),
        "text": vocab_emb,
        "feats": feats,
        "out": out,
        "clip_in": clip_in,
    }


@pytest.fixture(scope="module")
def maft_run(maft_dev: dict) -> dict:
    torch.set_num_threads(2)
    pred = Predictor.from_official(maft_dev["weights"], maft_dev["config"])
    vocab = _vocab(maft_dev["inputs"])
    return {"pred": pred, **_run(pred, maft_dev["image"], vocab, vocab.seen)}


def test_inputs_match(maft_run: dict, maft_dev: dict) -> None:
    """Image reading, the (no-op) resize, normalisation and zero padding."""
    inputs, gold = maft_dev["inputs"], maft_dev["outputs"]
    img = torch.from_numpy(maft_run["img"]).permute(2, 0, 1)
    assert torch.equal(img, inputs["image_orig_uint8"])
    h, w = inputs["image_mapped_uint8"].shape[-2:]
    assert torch.equal(
        maft_run["batch"]["image"][0, :, :h, :w].to(torch.uint8), inputs["image_mapped_uint8"]
    )
    assert_close_rel(maft_run["normalized"], gold["images_normalized"], 1e-6, "images_normalized")
    assert_close_rel(maft_run["clip_in"], gold["clip_images_480"], 1e-6, "clip_images_480")
    assert_close_rel(maft_run["text"], gold["text_features"], REL_CLIP, "text_features")


def test_generator_stages_match(maft_run: dict, maft_dev: dict) -> None:
    gold, feats = maft_dev["outputs"], maft_run["feats"]
    for level in ("res2", "res3", "res4", "res5"):
        assert_close_rel(feats["backbone"][level], gold[f"backbone_{level}"], REL_NET, level)
    assert_close_rel(feats["pd_mask_features"], gold["pd_mask_features"], REL_NET, "pd_mask")
    for i in range(3):
        assert_close_rel(
            feats["pd_multi_scale_features"][i],
            gold[f"pd_multi_scale_features_{i}"],
            REL_NET,
            f"pd_multi_scale_features_{i}",
        )
        assert_close_rel(
            feats["multi_scale_features"][i],
            gold[f"multi_scale_features_{i}"],
            REL_NET,
            f"multi_scale_features_{i}",
        )
    assert_close_rel(feats["mask_features"], gold["mask_features"], REL_NET, "mask_features")
    pred = feats["predictor"]
    assert_close_rel(pred["pred_logits"], gold["pred_logits"], REL_NET, "pred_logits")
    assert_close_rel(pred["pred_masks"], gold["pred_masks"], REL_NET, "pred_masks")
    for i, aux in enumerate(pred["aux_outputs"]):
        assert_close_rel(aux["pred_logits"], gold["aux_pred_logits"][i], REL_NET, f"aux{i}")
        assert_close_rel(aux["pred_masks"], gold["aux_pred_masks"][i], REL_NET, f"aux_m{i}")
    for i, blocked in enumerate(gold["dec_attn_masks"]):
        assert torch.equal(pred["attn_masks"][i], blocked), f"decoder attention mask {i}"


def test_scores_match(maft_run: dict, maft_dev: dict) -> None:
    """A^c of the fine-tuned IP-CLIP, A^p (FreeSeg's formula), validity and sem_seg scores."""
    gold, out = maft_dev["outputs"], maft_run["out"]
    assert_close_rel(out.clip_probs[0], gold["A_c"], REL_CLIP * 10, "A_c")
    assert_close_rel(out.proposal_probs[0], gold["A_p_freeseg_formula"], REL_NET, "A_p")
    assert torch.equal(out.valid[0], gold["valid_flag"])
    assert_close_rel(out.scores[0], gold["sem_seg_scores"], REL_NET, "sem_seg_scores")


def test_predict_api_returns_official_scores(maft_run: dict, maft_dev: dict) -> None:
    """``Predictor.predict``: ``scores`` is the official sem_seg output, labels its argmax."""
    inputs, gold = maft_dev["inputs"], maft_dev["outputs"]
    p = maft_run["pred"].predict(maft_dev["image"], _vocab(inputs))
    assert_close_rel(p.scores, gold["sem_seg_scores"], REL_NET, "Prediction.scores")
    assert torch.equal(p.label_map, p.scores.argmax(0))


def _freeseg_file(maft_dev: dict, tmp_path: Path) -> Path:
    """freeseg_dev's file: maft_dev's weights minus IPCLIP.*/T.*, a 172-class loss buffer."""
    sd = {k: v for k, v in maft_dev["state_dict"].items() if not k.startswith(("IPCLIP.", "T."))}
    empty = torch.ones(172)
    empty[-1] = 0.1
    sd["criterion.empty_weight"] = empty
    path = tmp_path / "freeseg_dev.pth"
    torch.save({"model": sd, "iteration": 0}, path)
    return path


@pytest.fixture(scope="module")
def freeseg_run(maft_dev: dict, freeseg_dev: dict, tmp_path_factory) -> dict:
    path = _freeseg_file(maft_dev, tmp_path_factory.mktemp("freeseg"))
    pred = Predictor.from_official(path, freeseg_dev["config"])
    vocab = _vocab(freeseg_dev["inputs"])
    return {"pred": pred, "vocab": vocab, **_run(pred, maft_dev["image"], vocab, vocab.seen)}


def test_freeseg_lambda0_with_filtering(freeseg_run: dict, freeseg_dev: dict) -> None:
    """FreeSeg's frozen row: frozen IP-CLIP A^c, invalid proposals dropped at lambda 0."""
    gold, out = freeseg_dev["outputs"], freeseg_run["out"]
    assert freeseg_run["pred"].mode == "frozen_ip_clip"
    assert_close_rel(out.proposal_probs[0], gold["A_p"], REL_NET, "A_p")
    assert_close_rel(out.clip_probs[0], gold["A_c"], REL_CLIP * 10, "A_c")
    assert_close_rel(out.scores[0], gold["sem_seg_scores"], REL_NET, "sem_seg_scores")


@pytest.mark.parametrize("flags", ["with", "without"])
def test_freeseg_lambda08(freeseg_run: dict, freeseg_dev: dict, flags: str) -> None:
    """The λ = 0.8 ensemble (seen p^λ c^(1-λ), unseen p^(1-λ) c^λ, c = 1 for invalid)."""
    gold = freeseg_dev["outputs"]["extra_lambda_runs"][f"lambda_0.8_{flags}_trainable_flag"]
    task = freeseg_run["pred"].task
    vocab, batch = freeseg_run["vocab"], freeseg_run["batch"]
    old = task.lambda_
    task.lambda_ = 0.8
    try:
        seg = task.segmenter("frozen_ip_clip")
        seen = vocab.seen if flags == "with" else None
        with torch.no_grad():
            out = seg(
                batch["image"].float(),
                task.text_embeddings(vocab),
                seen,
                batch["valid_size"],
                batch["orig_size"],
            )
    finally:
        task.lambda_ = old
    assert_close_rel(out.scores[0], gold["sem_seg_scores"], REL_NET, f"λ=0.8 {flags} flags")


def test_every_key_consumed_or_ignored(maft_dev: dict) -> None:
    from maft.models.release import map_release_state_dict

    sd = maft_dev["state_dict"]
    mapping = map_release_state_dict(sd, "maft")
    assert set(mapping.ignored) == {
        k
        for k in sd
        if k.startswith("T.")
        or k in ("criterion.empty_weight", "clip_adapter.pixel_mean", "clip_adapter.pixel_std")
    }
    mapped_sources = len(sd) - len(mapping.ignored)
    # every non-ignored key lands once, the frozen tower twice only for FreeSeg files
    assert len(mapping.state_dict) == mapped_sources


def test_wrong_keys_are_named(maft_dev: dict, tmp_path: Path) -> None:
    sd = dict(maft_dev["state_dict"])
    sd.pop("sem_seg_head.predictor.decoder_norm.weight")
    sd["sem_seg_head.predictor.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        Predictor.from_official(path, maft_dev["config"])
    msg = str(err.value)
    assert "decoder_norm.weight" in msg and "extra.weight" in msg and "broken.pth" in msg


def test_unsupported_config_key_is_named(maft_dev: dict, tmp_path: Path) -> None:
    text = Path(maft_dev["config"]).read_text().replace("STEM_TYPE: deeplab", "STEM_TYPE: basic")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="MODEL.RESNETS.STEM_TYPE"):
        Predictor.from_official(maft_dev["weights"], cfg)


def test_without_config_uses_released_settings(maft_dev: dict) -> None:
    """No yaml: sizes read from the tensors, released test settings (short side 640)."""
    pred = Predictor.from_official(maft_dev["weights"])
    gen, want = pred.task.hparams.generator, golden_kwargs(maft_dev)
    keys = ("depth", "stem_out_channels", "conv_dim", "hidden_dim", "dec_layers", "enc_layers")
    assert {k: gen[k] for k in keys} == {k: want[k] for k in keys}
    assert pred.short_side == 640 and pred.task.lambda_ == 0.0
