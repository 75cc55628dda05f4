"""Processor of the Sign2Text model: sign sequences and target sentences in, model-ready tensors out."""

import warnings
from collections.abc import Sequence

import numpy as np
from transformers import BatchFeature, ProcessorMixin

from .processing_pose import SequenceSettingsMixin
from .processing_vlp import validate_texts


class Sign2TextProcessor(SequenceSettingsMixin, ProcessorMixin):
    r"""
    Pairs the DistilBERT (WordPiece) tokenizer with the pose/feature preprocessing of [`prepare_sequences`].

    A target sentence is tokenized once and serves twice: as `labels` for the decoder (its word pieces followed by
    [SEP], padded with -100) and as `text_input_ids`/`text_attention_mask` ([CLS] … [SEP]) for the contrastive text
    encoder.

    Args:
        tokenizer: a fast BERT-family tokenizer whose ids match the model's `vocab_size` and special tokens.
        max_target_length (`int`, defaults to 64): longest target in tokens, counting [SEP]; must match the model's
            `max_target_length`. Longer sentences are cut, with a warning.
        max_frames, num_keypoints, keypoint_dim, feature_dim: must match the model's `sequence_config`.
        long_sequence_strategy (`str`, defaults to `"sample"`): `"sample"`, `"truncate"` (both warn) or `"error"`
            for clips longer than `max_frames`.
        missing_keypoints (`str`, defaults to `"error"`): `"error"` rejects NaN keypoints; `"mask"` zeroes them and
            masks out frames where every keypoint is missing (a clip with no frame left is still an error).
        normalize_keypoints (`bool`, defaults to `True`): centre and scale each clip's keypoints.
        center_frame_features (`bool`, defaults to `False`): subtract each clip's mean frame feature, removing what
            stays constant through a clip (a signer's appearance, lighting) from the visual stream.
    """

    def __init__(
        self,
        tokenizer=None,
        max_target_length: int = 64,
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
        if max_target_length < 2:
            raise ValueError(f"max_target_length must leave room for a word and [SEP], got {max_target_length}.")
        self.max_target_length = max_target_length
        self._set_sequence_settings(
            max_frames, num_keypoints, keypoint_dim, feature_dim, long_sequence_strategy, missing_keypoints, normalize_keypoints,
            center_frame_features,
        )
        super().__init__(tokenizer, **kwargs)

    def __call__(
        self,
        keypoints: Sequence[np.ndarray] | None = None,
        frame_features: Sequence[np.ndarray] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Returns `keypoints`/`frame_features`/`frame_mask` for the clips given, and `labels`, `text_input_ids`,
        `text_attention_mask` for the target sentences given."""
        if keypoints is None and frame_features is None and text is None:
            raise ValueError("Pass keypoints, frame_features or text.")
        data, batch_sizes = {}, {}
        if keypoints is not None or frame_features is not None:
            sequences = self._prepare_sequences(keypoints, frame_features)
            batch_sizes["sequences"] = sequences["frame_mask"].shape[0]
            data.update(sequences)
        if text is not None:
            targets = self._encode_targets(validate_texts(text, what="target sentence"))
            batch_sizes["text"] = len(targets["labels"])
            data.update(targets)
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"Inputs have different batch sizes: {batch_sizes}; pass one target sentence per clip.")
        return BatchFeature(data, tensor_type=return_tensors)

    def _encode_targets(self, texts: list[str]) -> dict[str, list[list[int]]]:
        tokenizer = self.tokenizer
        encodings = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        word_pieces = []
        for index, (text, ids, offsets) in enumerate(zip(texts, encodings["input_ids"], encodings["offset_mapping"])):
            if not ids:
                raise ValueError(f"Target sentence {index} ({text!r}) has no token the vocabulary can represent.")
            unknown = [text[start:end] for token, (start, end) in zip(ids, offsets) if token == tokenizer.unk_token_id]
            if unknown:
                characters = sorted({char for span in unknown for char in self._unknown_characters(span)})
                raise ValueError(
                    f"Target sentence {index} ({text!r}) contains characters the vocabulary cannot represent: "
                    f"{characters}; they would be learned as [UNK]. Remove or transliterate them."
                )
            if len(ids) > self.max_target_length - 1:
                warnings.warn(
                    f"Target sentence {index} has {len(ids) + 1} tokens with [SEP] > max_target_length="
                    f"{self.max_target_length}; cutting it.",
                    stacklevel=3,
                )
                ids = ids[: self.max_target_length - 1]
            word_pieces.append(ids)
        longest = max(len(ids) for ids in word_pieces) + 1
        labels = [ids + [tokenizer.sep_token_id] + [-100] * (longest - len(ids) - 1) for ids in word_pieces]
        text_input_ids = [
            [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id] + [tokenizer.pad_token_id] * (longest - len(ids) - 1)
            for ids in word_pieces
        ]
        text_attention_mask = [[1] * (len(ids) + 2) + [0] * (longest - len(ids) - 1) for ids in word_pieces]
        return {"labels": labels, "text_input_ids": text_input_ids, "text_attention_mask": text_attention_mask}

    def _unknown_characters(self, span: str) -> list[str]:
        """The characters of an [UNK] span that are unknown on their own, or the whole span if none is."""
        unknown = [
            char
            for char in span
            if self.tokenizer.unk_token_id in self.tokenizer(char, add_special_tokens=False)["input_ids"]
        ]
        return unknown or [span]

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Generated ids to sentences; the [CLS] start, [SEP] end and padding are dropped by default."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["keypoints", "frame_features", "frame_mask", "labels", "text_input_ids", "text_attention_mask"]


__all__ = ["Sign2TextProcessor"]
