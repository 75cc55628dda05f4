"""Datasets for the four models: seeded synthetic stand-ins and loaders for the real corpora, sharing two schemas."""

from .coco_karpathy import load_coco_karpathy
from .keypoint_table import load_keypoint_table
from .synthetic_shapes import IMAGE_CAPTION_FEATURES, make_shapes_dataset, make_shapes_splits
from .synthetic_signs import (
    SENTENCE_POOL,
    VOCABULARY,
    make_signs_dataset,
    make_signs_splits,
    sign_sequence_features,
)

__all__ = [
    "IMAGE_CAPTION_FEATURES",
    "SENTENCE_POOL",
    "VOCABULARY",
    "load_coco_karpathy",
    "load_keypoint_table",
    "make_shapes_dataset",
    "make_shapes_splits",
    "make_signs_dataset",
    "make_signs_splits",
    "sign_sequence_features",
]
