"""CLIP layer: open_clip loading, text classifier, IP-CLIP encoder and frozen-CLIP merge baselines.

Importing this package registers the JSON architectures in ``model_configs/`` (e.g. ``maft-tiny``)
with open_clip, so ``open_clip.create_model("maft-tiny")`` works.
"""

from __future__ import annotations

from maft.models.clip.convert import ConversionReport, convert_maft_state_dict, load_maft_visual
from maft.models.clip.factory import (
    ClipNormalization,
    build_clip,
    get_tokenizer,
    register_model_configs,
)
from maft.models.clip.ip_clip import IPClipEncoder, proposal_attention_mask
from maft.models.clip.merge import classify_merged, merge_subimages, valid_proposals
from maft.models.clip.text import VILD_TEMPLATES, TextClassifier

register_model_configs()

__all__ = [
    "ClipNormalization",
    "ConversionReport",
    "IPClipEncoder",
    "TextClassifier",
    "VILD_TEMPLATES",
    "build_clip",
    "classify_merged",
    "convert_maft_state_dict",
    "get_tokenizer",
    "load_maft_visual",
    "merge_subimages",
    "proposal_attention_mask",
    "register_model_configs",
    "valid_proposals",
]
