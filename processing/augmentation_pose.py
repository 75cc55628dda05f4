"""Random views of keypoint clips for contrastive training: two augmentations of one clip are a positive pair.

Works on the raw per-clip arrays that `prepare_sequences` takes (keypoints `(frames, K, C)` with NaN = missing,
optional frame features `(frames, F)`), so every view is validated, masked and padded exactly like real data.
"""

import math
from dataclasses import dataclass

import numpy as np


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {bounds}.")


def _check_probability(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")


@dataclass(frozen=True)
class PoseAugmentation:
    """Temporal, spatial and missing-data perturbations of one keypoint clip.

    Distances (`noise_std`, `translation`) are in units of the clip's spread, the mean distance of its keypoints to
    their centre, which is what `prepare_sequences` divides by: one setting fits pixel and normalised coordinates.
    Every magnitude at its neutral value (speed 1, zeros, scale 1) returns the input unchanged.

    Args:
        speed_range: the clip is replayed at a speed drawn uniformly from `(low, high)` by picking the nearest source
            frame for each output frame; above 1 gives fewer frames, below 1 repeats frames.
        time_warp: strength of a smooth, monotone warp of the time axis on top of the speed change, so the tempo
            varies within the clip as it does within a signed sentence: output position u in [0, 1] reads source
            position `u + a sin(pi k u) / (pi k)` with `a` drawn from `[-time_warp, time_warp]` and k from {1, 2, 3}.
            In `[0, 1)`, which keeps the warp monotone and the first and last frames in place.
        crop_fraction: up to this share of the frames is cut from the start, and independently from the end, as
            signers start and stop at different moments. In `[0, 0.5)`, so at least one frame remains.
        noise_std: standard deviation of the Gaussian noise added to every present coordinate (keypoint detectors
            jitter from frame to frame).
        mask_probability: each present keypoint is marked missing (NaN) with this probability, as detectors drop
            occluded joints. A frame never loses its last keypoint this way.
        frame_mask_probability: each frame loses all its keypoints with this probability (a detector missing the
            whole hand); `prepare_sequences(..., missing_keypoints="mask")` then masks it out. One frame is kept.
        scale_range: x and y are stretched by factors drawn separately from `(low, high)`, changing the aspect ratio
            (a uniform scale alone would be undone by `prepare_sequences`' normalisation); a third dimension is left.
        rotation_degrees: in-plane rotation about the clip's centre by an angle drawn from `[-rotation_degrees,
            rotation_degrees]`.
        translation: x and y are shifted by amounts drawn from `[-translation, translation]`. Normalisation in
            `prepare_sequences` removes it; it matters only with `normalize_keypoints=False`.
        mirror_probability: with this probability x is reflected about the clip's centre: the same signing by a
            signer of the other handedness. Together with scale and rotation, a per-signer style transform.
    """

    speed_range: tuple[float, float] = (0.8, 1.2)
    crop_fraction: float = 0.1
    noise_std: float = 0.01
    mask_probability: float = 0.05
    frame_mask_probability: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)
    rotation_degrees: float = 0.0
    translation: float = 0.0
    time_warp: float = 0.0
    mirror_probability: float = 0.0

    def __post_init__(self):
        _check_range("speed_range", self.speed_range)
        _check_range("scale_range", self.scale_range)
        if not 0 <= self.crop_fraction < 0.5:
            raise ValueError(f"crop_fraction must be in [0, 0.5) so a frame remains, got {self.crop_fraction}.")
        _check_probability("mask_probability", self.mask_probability)
        _check_probability("frame_mask_probability", self.frame_mask_probability)
        _check_probability("mirror_probability", self.mirror_probability)
        if not 0 <= self.time_warp < 1:
            raise ValueError(f"time_warp must be in [0, 1) so the warp stays monotone, got {self.time_warp}.")
        if not 0 <= self.rotation_degrees <= 180:
            raise ValueError(f"rotation_degrees must be in [0, 180], got {self.rotation_degrees}.")
        for name in ("noise_std", "translation"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    def __call__(
        self, keypoints: np.ndarray, features: np.ndarray | None = None, *, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One random view of a clip; `features` get the same frame selection, so they stay aligned.

        The result depends only on the inputs and the state of `rng`.
        """
        keypoints = np.asarray(keypoints)
        if not np.issubdtype(keypoints.dtype, np.floating):
            keypoints = keypoints.astype(np.float32)
        if keypoints.ndim != 3 or keypoints.shape[0] == 0:
            raise ValueError(f"keypoints must have shape (frames >= 1, num_keypoints, dims), got {keypoints.shape}.")
        if features is not None:
            features = np.asarray(features)
            if features.ndim != 2 or features.shape[0] != keypoints.shape[0]:
                raise ValueError(
                    f"features must have shape ({keypoints.shape[0]}, feature_dim) to match the keypoint frames, "
                    f"got {features.shape}."
                )
        present_points = keypoints[~np.isnan(keypoints).any(axis=-1)]
        if len(present_points) == 0:
            raise ValueError("Every keypoint of the clip is missing; there is nothing to augment.")
        centre = present_points.mean(axis=0)
        spread = max(float(np.linalg.norm(present_points - centre, axis=-1).mean()), 1e-6)
        has_spatial = (
            tuple(self.scale_range) != (1.0, 1.0)
            or self.rotation_degrees > 0
            or self.translation > 0
            or self.mirror_probability > 0
        )
        if has_spatial and keypoints.shape[-1] < 2:
            raise ValueError(f"Scale, rotation, translation and mirroring need x and y; keypoints have {keypoints.shape[-1]} dim.")

        frames = self._frame_indices(keypoints.shape[0], rng)
        keypoints = keypoints[frames]
        features = None if features is None else features[frames]
        if has_spatial:
            keypoints = self._transform(keypoints, centre, spread, rng)
        if self.noise_std > 0:
            keypoints = keypoints + rng.normal(0.0, self.noise_std * spread, keypoints.shape).astype(keypoints.dtype)
        if self.mask_probability > 0 or self.frame_mask_probability > 0:
            keypoints = self._mask(keypoints, rng)
        return keypoints, features

    def _frame_indices(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """Crop both ends, then resample the rest to the new speed (warped in time) by nearest-frame indexing."""
        max_cut = math.floor(self.crop_fraction * num_frames)
        start, stop = rng.integers(0, max_cut + 1), num_frames - rng.integers(0, max_cut + 1)
        speed = rng.uniform(*self.speed_range)
        length = max(1, round((stop - start) / speed))
        if self.time_warp == 0:
            return np.linspace(start, stop - 1, length).round().astype(np.int64)
        position = np.linspace(0.0, 1.0, length)
        strength, waves = rng.uniform(-self.time_warp, self.time_warp), rng.integers(1, 4)
        position = position + strength * np.sin(np.pi * waves * position) / (np.pi * waves)
        return (start + position * (stop - 1 - start)).round().astype(np.int64)

    def _transform(
        self, keypoints: np.ndarray, centre: np.ndarray, spread: float, rng: np.random.Generator
    ) -> np.ndarray:
        """One x-y scale, rotation and shift for the whole clip, about its centre, so the motion itself is kept."""
        scale = rng.uniform(*self.scale_range, size=2)
        if self.mirror_probability > 0 and rng.random() < self.mirror_probability:
            scale[0] = -scale[0]
        angle = np.deg2rad(rng.uniform(-self.rotation_degrees, self.rotation_degrees))
        shift = rng.uniform(-self.translation, self.translation, size=2) * spread
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        planar = (keypoints[..., :2] - centre[:2]) * scale @ rotation.T + centre[:2] + shift
        transformed = keypoints.copy()
        transformed[..., :2] = planar
        return transformed

    def _mask(self, keypoints: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Drop single keypoints (never a frame's last one), then whole frames (never the clip's last one)."""
        present = ~np.isnan(keypoints).any(axis=-1)
        drop = present & (rng.random(present.shape) < self.mask_probability)
        emptied = np.flatnonzero(present.any(axis=1) & ~(present & ~drop).any(axis=1))
        if len(emptied):
            keep_scores = np.where(present[emptied], rng.random((len(emptied), present.shape[1])), -1.0)
            drop[emptied, keep_scores.argmax(axis=1)] = False
        if self.frame_mask_probability > 0:
            frame_drop = rng.random(len(present)) < self.frame_mask_probability
            remaining = present.any(axis=1) & ~frame_drop
            if present.any() and not remaining.any():
                frame_drop[rng.choice(np.flatnonzero(present.any(axis=1)))] = False
            drop |= frame_drop[:, None]
        return np.where(drop[..., None], np.nan, keypoints).astype(keypoints.dtype, copy=False)


__all__ = ["PoseAugmentation"]
