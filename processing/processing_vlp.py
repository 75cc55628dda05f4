"""Processor of the VLP dual encoder: images, sign sequences and captions in, model-ready tensors out."""

from collections.abc import Sequence

import numpy as np
from transformers import BatchFeature, ProcessorMixin

from .processing_images import validate_images
from .processing_pose import SequenceSettingsMixin


def validate_texts(text: str | Sequence[str], what: str = "caption") -> list[str]:
    """A list of non-empty strings, or a TypeError/ValueError naming the first bad entry."""
    if isinstance(text, str):
        texts = [text]
    elif isinstance(text, (list, tuple)):
        texts = list(text)
    else:
        raise TypeError(f"text must be a {what} string or a list of them, got a {type(text).__name__}.")
    if not texts:
        raise ValueError(f"Got no {what}s; pass at least one.")
    for index, sample in enumerate(texts):
        if not isinstance(sample, str):
            raise TypeError(f"{what} {index} is a {type(sample).__name__}; pass strings.")
        if not sample.strip():
            raise ValueError(f"{what} {index} is empty; every {what} needs at least one word.")
    return texts


class VLPProcessor(SequenceSettingsMixin, ProcessorMixin):
    r"""
    Wraps an image processor (resizing, RGB conversion, normalisation), a tokenizer, and the pose/feature sequence
    preprocessing of [`prepare_sequences`].

    Args:
        image_processor: any transformers image processor (e.g. `CLIPImageProcessor`). Images in any PIL mode or
            size are converted to RGB and resized by it.
        tokenizer: the text tower's tokenizer.
        max_text_length (`int`, defaults to 64): captions are truncated to this many tokens.
        max_frames, num_keypoints, keypoint_dim, feature_dim: must match the model's `sequence_config`.
        long_sequence_strategy (`str`, defaults to `"sample"`): `"sample"`, `"truncate"` (both warn) or `"error"`
            for clips longer than `max_frames`.
        missing_keypoints (`str`, defaults to `"error"`): `"error"` or `"mask"` for NaN keypoints.
        normalize_keypoints (`bool`, defaults to `True`): centre and scale each clip's keypoints.
        center_frame_features (`bool`, defaults to `False`): subtract each clip's mean frame feature, removing what
            stays constant through a clip (a signer's appearance, lighting) from the visual stream.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_text_length: int = 64,
        max_frames: int = 128,
        num_keypoints: int = 21,
        keypoint_dim: int = 2,
        feature_dim: int = 32,
        long_sequence_strategy: str = "sample",
        missing_keypoints: str = "error",
        normalize_keypoints: bool = True,
        center_frame_features: bool = False,
        **kwargs,
    ):
        self.max_text_length = max_text_length
        self._set_sequence_settings(
            max_frames, num_keypoints, keypoint_dim, feature_dim, long_sequence_strategy, missing_keypoints, normalize_keypoints,
            center_frame_features,
        )
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images=None,
        keypoints: Sequence[np.ndarray] | None = None,
        frame_features: Sequence[np.ndarray] | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Returns `input_ids`/`attention_mask`, `pixel_values`, `keypoints`/`frame_features`/`frame_mask` for the inputs given."""
        if text is None and images is None and keypoints is None and frame_features is None:
            raise ValueError("Pass text, images, keypoints or frame_features.")
        data, batch_sizes = {}, {}
        if text is not None:
            texts = validate_texts(text)
            batch_sizes["text"] = len(texts)
            data.update(
                self.tokenizer(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=self.max_text_length,
                    return_token_type_ids=False,  # the dual encoder embeds one segment per caption
                    return_tensors=return_tensors,
                )
            )
        if images is not None:
            images = validate_images(images)
            data.update(self.image_processor(images, return_tensors=return_tensors))
            batch_sizes["images"] = len(data["pixel_values"])
        if keypoints is not None or frame_features is not None:
            sequences = self._prepare_sequences(keypoints, frame_features)
            batch_sizes["sequences"] = sequences["frame_mask"].shape[0]
            data.update(sequences)
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"Inputs have different batch sizes: {batch_sizes}; pass one caption per visual input.")
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "keypoints", "frame_features", "frame_mask"]


__all__ = ["VLPProcessor", "validate_texts"]
