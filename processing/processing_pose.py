"""Validation, normalisation and padding of sign-language sequences (shared by the VLP and Sign2Text processors)."""

import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

LONG_SEQUENCE_STRATEGIES = ("sample", "truncate", "error")
MISSING_KEYPOINT_POLICIES = ("error", "mask")


class LongClipWarning(UserWarning):
    """A clip longer than `max_frames` was resampled or truncated. A training run that meets many of them silences
    this category and reports their number once instead (as `train/sign2text.py` does)."""


def _kept_frames(num_frames: int, max_frames: int, strategy: str, index: int) -> np.ndarray:
    """Indices of the frames to keep when a clip is longer than `max_frames`."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    if strategy == "error":
        raise ValueError(
            f"Sequence {index} has {num_frames} frames but max_frames is {max_frames}; raise max_frames or use "
            "long_sequence_strategy='sample' or 'truncate'."
        )
    if strategy == "truncate":
        return np.arange(max_frames)
    return np.linspace(0, num_frames - 1, max_frames).round().astype(int)


def _warn_long_clips(lengths: dict[int, int], max_frames: int, strategy: str) -> None:
    """One warning per batch, naming every clip that was shortened, rather than one per clip."""
    if len(lengths) == 1:
        ((index, frames),) = lengths.items()
        what = f"Sequence {index} has {frames} frames > max_frames={max_frames}; "
        action = "resampling it uniformly" if strategy == "sample" else "keeping the first frames"
    else:
        listed = ", ".join(f"{index} ({frames})" for index, frames in lengths.items())
        what = f"{len(lengths)} sequences have more frames than max_frames={max_frames}: {listed}; "
        action = "resampling them uniformly" if strategy == "sample" else "keeping their first frames"
    warnings.warn(what + action + ".", LongClipWarning, stacklevel=3)


def _normalise_keypoints(keypoints: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Centre on the clip's mean keypoint and divide by its spread, so signer position and body scale drop out."""
    points = keypoints[present]
    centre = points.mean(axis=0)
    scale = np.linalg.norm(points - centre, axis=-1).mean()
    return (keypoints - centre) / max(float(scale), 1e-6)


def prepare_sequences(
    keypoints: Sequence[np.ndarray] | None,
    frame_features: Sequence[np.ndarray] | None,
    *,
    max_frames: int,
    num_keypoints: int,
    keypoint_dim: int,
    feature_dim: int,
    long_sequence_strategy: str = "sample",
    missing_keypoints: str = "error",
    normalize_keypoints: bool = True,
    center_frame_features: bool = False,
) -> dict[str, torch.Tensor]:
    """Turn per-clip arrays into padded tensors plus a frame mask.

    Args:
        keypoints: per clip, `(frames, num_keypoints, keypoint_dim)`; NaN marks a missing keypoint.
        frame_features: per clip, `(frames, feature_dim)`, same frame count as the clip's keypoints.
        long_sequence_strategy: for clips longer than `max_frames`: `"sample"` keeps `max_frames` frames spread
            uniformly over the clip (no words are cut off), `"truncate"` keeps the first ones, `"error"` raises.
        missing_keypoints: `"error"` rejects NaN keypoints; `"mask"` zeroes them and masks out frames where every
            keypoint is missing.
        center_frame_features: subtract each clip's mean feature vector over its frames, so what is constant
            through a clip (the signer's appearance, lighting, the camera) drops out and the motion stays.

    Returns:
        `keypoints` `(batch, frames, K, C)` and/or `frame_features` `(batch, frames, F)` as float32, and
        `frame_mask` `(batch, frames)` as int64 (1 = real frame).
    """
    if long_sequence_strategy not in LONG_SEQUENCE_STRATEGIES:
        raise ValueError(f"long_sequence_strategy must be one of {LONG_SEQUENCE_STRATEGIES}.")
    if missing_keypoints not in MISSING_KEYPOINT_POLICIES:
        raise ValueError(f"missing_keypoints must be one of {MISSING_KEYPOINT_POLICIES}.")
    if keypoints is None and frame_features is None:
        raise ValueError("Pass keypoints, frame_features, or both.")
    if keypoints is not None and frame_features is not None and len(keypoints) != len(frame_features):
        raise ValueError(f"Got {len(keypoints)} keypoint sequences but {len(frame_features)} feature sequences.")
    batch_size = len(keypoints if keypoints is not None else frame_features)
    if batch_size == 0:
        raise ValueError("Got an empty batch of sequences.")

    clips_keypoints, clips_features, clips_present, long_clips = [], [], [], {}
    for index in range(batch_size):
        present = None
        if keypoints is not None:
            clip = np.asarray(keypoints[index], dtype=np.float32)
            if clip.ndim != 3 or clip.shape[1:] != (num_keypoints, keypoint_dim):
                raise ValueError(
                    f"Keypoints of sequence {index} have shape {clip.shape}; expected (frames, {num_keypoints}, "
                    f"{keypoint_dim})."
                )
            if clip.shape[0] == 0:
                raise ValueError(f"Sequence {index} has no frames.")
            if np.isinf(clip).any():
                raise ValueError(f"Keypoints of sequence {index} contain inf; mark missing keypoints with NaN instead.")
            missing = np.isnan(clip).any(axis=-1)
            if missing.any() and missing_keypoints == "error":
                raise ValueError(
                    f"Keypoints of sequence {index} contain NaN ({int(missing.sum())} missing keypoints); clean the data "
                    "or use missing_keypoints='mask'."
                )
            frame_present = ~missing.all(axis=1)
            if not frame_present.any():
                raise ValueError(f"Every keypoint of every frame of sequence {index} is missing.")
            clip = np.where(missing[..., None], 0.0, clip)
            if normalize_keypoints:
                clip = np.where(missing[..., None], 0.0, _normalise_keypoints(clip, ~missing))
            present = frame_present
            clips_keypoints.append(clip)
        if frame_features is not None:
            features = np.asarray(frame_features[index], dtype=np.float32)
            if features.ndim != 2 or features.shape[1] != feature_dim:
                raise ValueError(
                    f"Frame features of sequence {index} have shape {features.shape}; expected (frames, {feature_dim})."
                )
            if features.shape[0] == 0:
                raise ValueError(f"Sequence {index} has no frames.")
            if not np.isfinite(features).all():
                raise ValueError(f"Frame features of sequence {index} contain NaN or inf.")
            if present is not None and features.shape[0] != present.shape[0]:
                raise ValueError(
                    f"Sequence {index} has {present.shape[0]} keypoint frames but {features.shape[0]} feature frames."
                )
            present = np.ones(features.shape[0], dtype=bool) if present is None else present
            if center_frame_features:
                features = features - features.mean(axis=0)
            clips_features.append(features)
        kept = _kept_frames(len(present), max_frames, long_sequence_strategy, index)
        if len(present) > max_frames:
            long_clips[index] = len(present)
        clips_present.append(present[kept])
        for clips in (clips_keypoints, clips_features):
            if len(clips) == index + 1:
                clips[index] = clips[index][kept]

    if long_clips:
        _warn_long_clips(long_clips, max_frames, long_sequence_strategy)
    num_frames = max(len(present) for present in clips_present)
    batch = {"frame_mask": torch.zeros(batch_size, num_frames, dtype=torch.long)}
    for index, present in enumerate(clips_present):
        batch["frame_mask"][index, : len(present)] = torch.from_numpy(present.astype(np.int64))
    for name, clips in (("keypoints", clips_keypoints), ("frame_features", clips_features)):
        if clips:
            padded = torch.zeros(batch_size, num_frames, *clips[0].shape[1:])
            for index, clip in enumerate(clips):
                padded[index, : len(clip)] = torch.from_numpy(np.ascontiguousarray(clip))
            batch[name] = padded
    return batch


def load_clip(clip, use_keypoints: bool, use_visual_features: bool) -> dict[str, np.ndarray | None]:
    """One sign clip as a pipeline or the demo takes it, as the `keypoints` / `frame_features` arrays a model reads
    (`None` for a stream it does not read).

    `clip` is a `(frames, keypoints, dims)` keypoint array, a `.npy` path holding one, a `.npz` path or a mapping
    with `keypoints` and/or `frame_features`. A stream the model reads but the clip lacks is an error that says so.
    """
    if isinstance(clip, (str, os.PathLike)):
        path = os.fspath(clip)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Sign clip {path} does not exist; pass a .npy of keypoints or a .npz.")
        if path.endswith(".npz"):
            with np.load(path) as archive:
                clip = {name: archive[name] for name in archive.files}
        elif path.endswith(".npy"):
            clip = {"keypoints": np.load(path)}
        else:
            raise ValueError(f"Sign clip {path} is neither .npy (keypoints) nor .npz (keypoints, frame_features).")
    elif not isinstance(clip, Mapping):
        clip = {"keypoints": clip}
    unknown = sorted(set(clip) - {"keypoints", "frame_features"})
    if unknown:
        raise ValueError(f"A sign clip holds `keypoints` and/or `frame_features`, not {unknown}.")
    streams = {"keypoints": use_keypoints, "frame_features": use_visual_features}
    missing = [name for name, used in streams.items() if used and clip.get(name) is None]
    if missing:
        raise ValueError(
            f"This model reads {' and '.join(name for name, used in streams.items() if used)} but the clip has no "
            f"{' or '.join(missing)}; pass a mapping or .npz holding {', '.join(missing)} too."
        )
    return {name: np.asarray(clip[name], dtype=np.float32) if used else None for name, used in streams.items()}


class SequenceSettingsMixin:
    """The pose/feature preprocessing settings a processor carries (and saves), and the call that applies them."""

    def _set_sequence_settings(
        self,
        max_frames: int,
        num_keypoints: int,
        keypoint_dim: int,
        feature_dim: int,
        long_sequence_strategy: str,
        missing_keypoints: str,
        normalize_keypoints: bool,
        center_frame_features: bool = False,
    ) -> None:
        self.max_frames = max_frames
        self.num_keypoints = num_keypoints
        self.keypoint_dim = keypoint_dim
        self.feature_dim = feature_dim
        self.long_sequence_strategy = long_sequence_strategy
        self.missing_keypoints = missing_keypoints
        self.normalize_keypoints = normalize_keypoints
        self.center_frame_features = center_frame_features

    def _prepare_sequences(self, keypoints, frame_features) -> dict[str, torch.Tensor]:
        return prepare_sequences(
            keypoints,
            frame_features,
            max_frames=self.max_frames,
            num_keypoints=self.num_keypoints,
            keypoint_dim=self.keypoint_dim,
            feature_dim=self.feature_dim,
            long_sequence_strategy=self.long_sequence_strategy,
            missing_keypoints=self.missing_keypoints,
            normalize_keypoints=self.normalize_keypoints,
            center_frame_features=self.center_frame_features,
        )


__all__ = ["LongClipWarning", "SequenceSettingsMixin", "load_clip", "prepare_sequences"]
