"""Tests for `PoseAugmentation`: random views of keypoint clips for contrastive training."""

import numpy as np
import pytest

from data.synthetic_signs import make_signs_dataset
from processing import PoseAugmentation, prepare_sequences

NEUTRAL = {
    "speed_range": (1.0, 1.0),
    "crop_fraction": 0.0,
    "noise_std": 0.0,
    "mask_probability": 0.0,
    "scale_range": (1.0, 1.0),
    "rotation_degrees": 0.0,
    "translation": 0.0,
}
STRONG = {
    "speed_range": (0.7, 1.3),
    "crop_fraction": 0.2,
    "noise_std": 0.05,
    "mask_probability": 0.2,
    "frame_mask_probability": 0.1,
    "scale_range": (0.9, 1.1),
    "rotation_degrees": 15.0,
    "translation": 0.1,
}


@pytest.fixture(scope="module")
def signed_clip():
    example = make_signs_dataset(1, seed=3, feature_dim=32)[0]
    return np.asarray(example["keypoints"], dtype=np.float32), np.asarray(example["features"], dtype=np.float32)


def _random_clip(frames=40, num_keypoints=21, dims=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((frames, num_keypoints, dims)) * 50 + 200).astype(np.float32)


def _spread(clip):
    points = clip[~np.isnan(clip).any(axis=-1)]
    return np.linalg.norm(points - points.mean(axis=0), axis=-1).mean()


def test_neutral_settings_return_the_input(signed_clip):
    keypoints, features = signed_clip
    keypoints = keypoints.copy()
    keypoints[2, 5] = np.nan
    out_keypoints, out_features = PoseAugmentation(**NEUTRAL)(keypoints, features, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out_keypoints, keypoints)
    np.testing.assert_array_equal(out_features, features)
    assert out_keypoints.dtype == keypoints.dtype


def test_features_follow_the_same_frames():
    frames = 60
    keypoints = np.broadcast_to(np.arange(frames, dtype=np.float32)[:, None, None], (frames, 5, 2)).copy()
    features = np.repeat(np.arange(frames, dtype=np.float32)[:, None], 3, axis=1)
    augment = PoseAugmentation(**{**NEUTRAL, "speed_range": (0.5, 2.0), "crop_fraction": 0.1})
    lengths = set()
    for seed in range(20):
        out_keypoints, out_features = augment(keypoints, features, rng=np.random.default_rng(seed))
        assert out_keypoints.shape[1:] == (5, 2) and out_features.shape[1:] == (3,)
        assert len(out_keypoints) == len(out_features) >= 1
        np.testing.assert_array_equal(out_keypoints[:, 0, 0], out_features[:, 0])
        assert np.all(np.diff(out_features[:, 0]) >= 0), "frames must stay in temporal order"
        lengths.add(len(out_keypoints))
    assert len(lengths) > 5 and min(lengths) < frames < max(lengths)


def test_same_seed_same_view_other_seed_other_view(signed_clip):
    keypoints, features = signed_clip
    augment = PoseAugmentation(**STRONG)
    first = augment(keypoints, features, rng=np.random.default_rng(7))
    again = augment(keypoints, features, rng=np.random.default_rng(7))
    other = augment(keypoints, features, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0], equal_nan=True)


def test_masking_rate_matches_probability_and_keeps_existing_gaps():
    keypoints = _random_clip(frames=200, num_keypoints=50)
    keypoints[:, 0] = np.nan  # a keypoint the detector never found
    out, _ = PoseAugmentation(**{**NEUTRAL, "mask_probability": 0.2})(keypoints, rng=np.random.default_rng(0))
    missing = np.isnan(out).any(axis=-1)
    assert missing[:, 0].all()
    assert abs(missing[:, 1:].mean() - 0.2) < 0.02


def test_masking_never_empties_a_frame_unless_frames_are_asked_for():
    keypoints = _random_clip(frames=300, num_keypoints=3)
    out, _ = PoseAugmentation(**{**NEUTRAL, "mask_probability": 0.95})(keypoints, rng=np.random.default_rng(0))
    assert (~np.isnan(out).any(axis=-1)).any(axis=1).all()

    frame_masking = PoseAugmentation(**{**NEUTRAL, "frame_mask_probability": 0.3})
    out, _ = frame_masking(keypoints, rng=np.random.default_rng(0))
    empty_frames = np.isnan(out).all(axis=(1, 2))
    assert abs(empty_frames.mean() - 0.3) < 0.08
    assert not np.isnan(out[~empty_frames]).any(), "frame masking must drop whole frames only"

    almost_always = PoseAugmentation(**{**NEUTRAL, "frame_mask_probability": 0.99})
    out, _ = almost_always(keypoints[:5], rng=np.random.default_rng(0))
    assert (~np.isnan(out).all(axis=(1, 2))).sum() >= 1


def test_noise_std_is_relative_to_the_clip_spread():
    keypoints = _random_clip(frames=100)
    out, _ = PoseAugmentation(**{**NEUTRAL, "noise_std": 0.05})(keypoints, rng=np.random.default_rng(0))
    measured = (out - keypoints).std() / _spread(keypoints)
    assert measured == pytest.approx(0.05, rel=0.05)


def test_rotation_keeps_shape_and_scale_changes_aspect():
    keypoints = _random_clip(frames=10)
    rotated, _ = PoseAugmentation(**{**NEUTRAL, "rotation_degrees": 30.0})(keypoints, rng=np.random.default_rng(0))
    assert not np.allclose(rotated, keypoints)
    np.testing.assert_allclose(_spread(rotated), _spread(keypoints), rtol=1e-5)
    np.testing.assert_allclose(rotated.reshape(-1, 2).mean(0), keypoints.reshape(-1, 2).mean(0), rtol=1e-5)

    stretched, _ = PoseAugmentation(**{**NEUTRAL, "scale_range": (0.5, 2.0)})(keypoints, rng=np.random.default_rng(0))
    ratios = stretched.reshape(-1, 2).std(0) / keypoints.reshape(-1, 2).std(0)
    assert np.all((ratios >= 0.5 - 1e-5) & (ratios <= 2.0 + 1e-5)) and abs(ratios[0] - ratios[1]) > 1e-3


def test_mirroring_reflects_x_about_the_centre_for_the_chosen_share_of_views():
    keypoints = _random_clip()
    centre_x = keypoints[..., 0].mean()
    augment = PoseAugmentation(**{**NEUTRAL, "mirror_probability": 0.5})
    mirrored = 0
    for seed in range(40):
        view, _ = augment(keypoints, rng=np.random.default_rng(seed))
        np.testing.assert_allclose(view[..., 1], keypoints[..., 1], rtol=1e-5)
        if np.allclose(view[..., 0], keypoints[..., 0], rtol=1e-5):
            continue
        np.testing.assert_allclose(view[..., 0], 2 * centre_x - keypoints[..., 0], rtol=1e-5)
        mirrored += 1
    assert 10 <= mirrored <= 30


def test_time_warp_varies_the_tempo_within_the_clip_and_keeps_its_ends():
    frames = 50
    keypoints = np.broadcast_to(np.arange(frames, dtype=np.float32)[:, None, None], (frames, 3, 2)).copy()
    augment = PoseAugmentation(**{**NEUTRAL, "time_warp": 0.5})
    warped = 0
    for seed in range(10):
        view, _ = augment(keypoints, rng=np.random.default_rng(seed))
        source = view[:, 0, 0]
        assert len(source) == frames and source[0] == 0 and source[-1] == frames - 1
        assert (np.diff(source) >= 0).all()  # monotone: the signs keep their order
        warped += not np.array_equal(source, np.arange(frames))
    assert warped >= 8


def test_views_pass_prepare_sequences(signed_clip):
    keypoints, features = signed_clip
    augment = PoseAugmentation(**STRONG)
    rng = np.random.default_rng(0)
    views = [augment(keypoints, features, rng=rng) for _ in range(8)]
    batch = prepare_sequences(
        [view[0] for view in views],
        [view[1] for view in views],
        max_frames=256,
        num_keypoints=keypoints.shape[1],
        keypoint_dim=keypoints.shape[2],
        feature_dim=features.shape[1],
        missing_keypoints="mask",
    )
    assert batch["keypoints"].isfinite().all() and batch["frame_features"].isfinite().all()
    assert batch["frame_mask"].sum(1).tolist() == [int((~np.isnan(v[0]).all(axis=(1, 2))).sum()) for v in views]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"speed_range": (0.0, 1.2)}, "speed_range"),
        ({"speed_range": (1.2, 0.8)}, "speed_range"),
        ({"speed_range": (1.0,)}, "speed_range"),
        ({"crop_fraction": 0.5}, "crop_fraction"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"mask_probability": 1.0}, "mask_probability"),
        ({"frame_mask_probability": -0.1}, "frame_mask_probability"),
        ({"scale_range": (0.0, 1.0)}, "scale_range"),
        ({"rotation_degrees": 200.0}, "rotation_degrees"),
        ({"translation": float("nan")}, "translation"),
        ({"time_warp": 1.0}, "time_warp"),
        ({"mirror_probability": 1.0}, "mirror_probability"),
    ],
)
def test_invalid_settings_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        PoseAugmentation(**settings)


def test_invalid_inputs_raise():
    augment = PoseAugmentation()
    rng = np.random.default_rng(0)
    keypoints = _random_clip(frames=10)
    with pytest.raises(ValueError, match="to match the keypoint frames"):
        augment(keypoints, np.zeros((9, 4)), rng=rng)
    with pytest.raises(ValueError, match="shape"):
        augment(keypoints[0], rng=rng)
    with pytest.raises(ValueError, match="missing"):
        augment(np.full((4, 3, 2), np.nan), rng=rng)
