"""maft: Mask-aware Fine-tuning of CLIP for zero-shot and open-vocabulary segmentation."""

__version__ = "0.1.0"
