"""Cross-Consistency Training (Ouali, Hudelot, Tami, CVPR 2020) for semi-supervised semantic segmentation."""

__version__ = "0.1.0"

IGNORE_INDEX = 255
