"""VLPProcessor (images, captions, sign sequences) and the shared sequence preprocessing of `prepare_sequences`."""

import re
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BatchFeature

from conftest import tiny_vlp_config
from modeling import VLPModel
from processing import VLPProcessor
from train.backbones import load_image_processor, tiny_text_config

CLS, SEP, PAD = 101, 102, 0
HELLO = 7592  # "hello" in the uncased WordPiece vocabulary
EXPECTED_KEYPOINT_SHAPE = r"expected \(frames, 21, 2\)"
VISUAL_INPUTS = ("pixel_values", "keypoints", "frame_features", "frame_mask")


def make_processor(tokenizer, **kwargs) -> VLPProcessor:
    """Built as `train/vlp.py` builds it, at the sizes of `tiny_vlp_config`."""
    return VLPProcessor(
        image_processor=load_image_processor(image_size=32),
        tokenizer=tokenizer,
        max_frames=16,
        num_keypoints=21,
        keypoint_dim=2,
        feature_dim=8,
        **kwargs,
    )


@pytest.fixture(scope="module")
def processor(tokenizer):
    return make_processor(tokenizer)


def random_clips(*frame_counts: int, seed: int = 0) -> list[np.ndarray]:
    """Pixel-like keypoints, one `(frames, 21, 2)` clip per frame count."""
    rng = np.random.default_rng(seed)
    return [(rng.random((frames, 21, 2)) * 200 + 50).astype(np.float32) for frames in frame_counts]


def random_features(*frame_counts: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((frames, 8)).astype(np.float32) for frames in frame_counts]


def frame_numbered_features(frames: int) -> np.ndarray:
    """Every feature of frame t equals t, so the output tells which frames were kept."""
    return np.repeat(np.arange(frames, dtype=np.float32)[:, None], 8, axis=1)


def frame_numbered_keypoints(frames: int) -> np.ndarray:
    """Every coordinate of frame t equals t (read back with `normalize_keypoints=False`)."""
    return np.broadcast_to(np.arange(frames, dtype=np.float32)[:, None, None], (frames, 21, 2)).copy()


def unnormalise(pixel_values: torch.Tensor, image_processor) -> torch.Tensor:
    """Back to [0, 1] RGB, to check what the image processor converted each mode to."""
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return pixel_values * std + mean


def caught_warnings(call: Callable[[], BatchFeature]) -> tuple[BatchFeature, list[str]]:
    """The call's result and the messages of every UserWarning it raised, repeats included."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]


# Images


def test_images_of_any_mode_and_size_become_rgb_pixel_values(processor):
    images = [
        Image.new("L", (50, 20), 128),
        Image.new("RGBA", (300, 17), (10, 20, 30, 255)),
        Image.new("P", (33, 33), 3),
        Image.new("CMYK", (40, 40), (0, 0, 0, 0)),
        Image.new("RGB", (17, 300), (255, 0, 0)),
        Image.new("1", (5, 9), 1),
    ]
    pixel_values = processor(images=images)["pixel_values"]
    assert pixel_values.shape == (6, 3, 32, 32)
    assert pixel_values.dtype == torch.float32 and pixel_values.isfinite().all()


def test_grey_transparent_and_cmyk_images_convert_to_the_right_rgb(processor):
    images = [
        Image.new("L", (50, 20), 128),
        Image.new("RGBA", (300, 17), (0, 0, 0, 0)),
        Image.new("CMYK", (40, 40), (0, 0, 0, 0)),
    ]
    rgb = unnormalise(processor(images=images)["pixel_values"], processor.image_processor)
    torch.testing.assert_close(rgb[0], torch.full((3, 32, 32), 128 / 255), atol=1e-5, rtol=0)
    # transparency is composited onto white, and CMYK (0, 0, 0, 0) is white paper
    torch.testing.assert_close(rgb[1:], torch.ones(2, 3, 32, 32), atol=1e-5, rtol=0)


@pytest.mark.parametrize("not_an_image", [np.zeros(4, dtype=np.int64)], ids=["1d-int-array"])
def test_non_image_input_raises_value_error(processor, not_an_image):
    with pytest.raises(ValueError, match="(?i)image"):
        processor(images=[Image.new("RGB", (8, 8)), not_an_image])


@pytest.mark.parametrize(
    "not_an_image", [5, None, {"path": "cat.png"}, "cat.png"], ids=["int", "none", "dict", "path-string"]
)
def test_non_image_object_raises_type_error_naming_its_index(processor, not_an_image):
    with pytest.raises(TypeError, match=rf"[Ii]mage 1 is a {type(not_an_image).__name__}"):
        processor(images=[Image.new("RGB", (8, 8)), not_an_image])


@pytest.mark.parametrize(
    "image_batch", [np.zeros((2, 20, 30, 3), dtype=np.uint8), torch.zeros(2, 3, 20, 30)], ids=["numpy", "torch"]
)
def test_an_array_batch_of_images_counts_every_image(processor, image_batch):
    batch = processor(text=["a red square", "a blue square"], images=image_batch)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)


# Captions


def test_captions_are_tokenised_padded_and_masked(processor):
    batch = processor(text=["a photo of a cat", "dog"])
    assert batch["input_ids"].tolist() == [
        [CLS, 1037, 6302, 1997, 1037, 4937, SEP],
        [CLS, 3899, SEP, PAD, PAD, PAD, PAD],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]


def test_a_single_caption_is_a_batch_of_one(processor):
    assert processor(text="dog")["input_ids"].tolist() == [[CLS, 3899, SEP]]


def test_captions_are_truncated_to_max_text_length(tokenizer):
    batch = make_processor(tokenizer, max_text_length=8)(text=["hello " * 50, "hello"])
    assert batch["input_ids"].tolist() == [
        [CLS] + [HELLO] * 6 + [SEP],
        [CLS, HELLO, SEP, PAD, PAD, PAD, PAD, PAD],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]


@pytest.mark.parametrize("empty", ["", " ", "\n\t  "])
def test_empty_caption_raises_value_error_naming_its_index(processor, empty):
    with pytest.raises(ValueError, match="caption 1 is empty"):
        processor(text=["a cat", empty, "a dog"])


@pytest.mark.parametrize("not_a_string", [None, 3, ["nested"]])
def test_non_string_caption_raises_type_error_naming_its_index(processor, not_a_string):
    with pytest.raises(TypeError, match=f"caption 1 is a {type(not_a_string).__name__}"):
        processor(text=["a cat", not_a_string])


@pytest.mark.parametrize("text", [5, b"a cat"], ids=["int", "bytes"])
def test_text_that_is_neither_a_string_nor_a_list_raises_type_error_naming_its_type(processor, text):
    with pytest.raises(TypeError, match=rf"(?i)(text|caption).*\b{type(text).__name__}\b"):
        processor(text=text)


@pytest.mark.parametrize("inputs", [{"text": []}, {"images": []}], ids=["text", "images"])
def test_empty_batch_raises_value_error(processor, inputs):
    with pytest.raises(ValueError, match="(?i)no|empty"):
        processor(**inputs)


# Keypoints


def test_keypoints_are_padded_with_a_frame_mask(processor):
    batch = processor(keypoints=random_clips(3, 5, 1))
    assert set(batch) == {"keypoints", "frame_mask"}
    assert batch["keypoints"].shape == (3, 5, 21, 2) and batch["keypoints"].dtype == torch.float32
    assert batch["frame_mask"].dtype == torch.int64
    assert batch["frame_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert batch["keypoints"][0, 3:].eq(0).all() and batch["keypoints"][2, 1:].eq(0).all()


def test_normalisation_removes_signer_position_and_scale(processor):
    clip, other = random_clips(7, 4)
    moved = clip * 3.5 + np.array([120.0, -45.0], dtype=np.float32)
    reference = processor(keypoints=[clip])["keypoints"][0]
    torch.testing.assert_close(processor(keypoints=[moved])["keypoints"][0], reference, atol=1e-5, rtol=0)
    # each clip is normalised on its own statistics, whatever else is in the batch
    torch.testing.assert_close(processor(keypoints=[clip, other])["keypoints"][0], reference, atol=1e-6, rtol=0)
    points = reference.reshape(-1, 2)
    torch.testing.assert_close(points.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert points.norm(dim=-1).mean().item() == pytest.approx(1.0, abs=1e-5)


def test_normalize_keypoints_false_keeps_raw_coordinates(tokenizer):
    clip = random_clips(5)[0]
    keypoints = make_processor(tokenizer, normalize_keypoints=False)(keypoints=[clip])["keypoints"]
    assert torch.equal(keypoints[0], torch.from_numpy(clip))


def test_center_frame_features_removes_what_is_constant_through_a_clip(tokenizer):
    """A signer's appearance adds the same vector to every frame: centred, two clips differing only by it are equal,
    and the frame-to-frame motion is kept."""
    motion = random_features(6)[0]
    appearance = np.random.default_rng(2).standard_normal(8).astype(np.float32) * 5
    centring = make_processor(tokenizer, center_frame_features=True)
    plain, shifted = (centring(frame_features=[clip])["frame_features"][0] for clip in (motion, motion + appearance))
    torch.testing.assert_close(plain, shifted, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain, torch.from_numpy(motion - motion.mean(0)), atol=1e-6, rtol=0)
    uncentred = make_processor(tokenizer)(frame_features=[motion + appearance])["frame_features"][0]
    assert torch.equal(uncentred, torch.from_numpy(motion + appearance))  # off by default: features pass unchanged


@pytest.mark.parametrize(
    "shape", [(5, 21), (5, 20, 2), (5, 21, 3), (1, 5, 21, 2)], ids=["2d", "wrong-K", "wrong-C", "4d"]
)
def test_malformed_keypoints_raise_value_error_naming_sequence_and_expected_shape(processor, shape):
    clips = [random_clips(5)[0], np.zeros(shape, dtype=np.float32)]
    with pytest.raises(ValueError, match=rf"sequence 1 have shape {re.escape(str(shape))}; {EXPECTED_KEYPOINT_SHAPE}"):
        processor(keypoints=clips)


def test_clip_without_frames_raises(processor):
    with pytest.raises(ValueError, match="Sequence 1 has no frames"):
        processor(keypoints=[random_clips(3)[0], np.zeros((0, 21, 2), dtype=np.float32)])


def test_feature_clip_without_frames_raises(processor):
    with pytest.raises(ValueError, match="Sequence 1 has no frames"):
        processor(frame_features=[*random_features(3), np.zeros((0, 8), dtype=np.float32)])


@pytest.mark.parametrize("missing_keypoints", ["error", "mask"])
def test_infinite_keypoints_raise(tokenizer, missing_keypoints):
    clip = random_clips(5)[0]
    clip[1, 3, 0] = np.inf
    with pytest.raises(ValueError, match="sequence 0 .*inf"):
        make_processor(tokenizer, missing_keypoints=missing_keypoints)(keypoints=[clip])


# Missing (NaN) keypoints


def test_nan_keypoints_raise_by_default_naming_the_count(processor):
    clip = random_clips(5)[0]
    clip[0, 2] = np.nan
    clip[3, 4] = np.nan
    clip[4, 20, 1] = np.nan  # one NaN coordinate is one missing keypoint
    with pytest.raises(ValueError, match=r"sequence 1 contain NaN \(3 missing keypoints\).*missing_keypoints='mask'"):
        processor(keypoints=[random_clips(2)[0], clip])


def test_masked_missing_keypoints_become_zero_and_empty_frames_are_masked(tokenizer):
    masking = make_processor(tokenizer, missing_keypoints="mask")
    clip = random_clips(6)[0]
    clip[2] = np.nan
    clip[4, 7] = np.nan
    clip[4, 8, 1] = np.nan
    batch = masking(keypoints=[clip])
    keypoints = batch["keypoints"][0]
    assert batch["frame_mask"].tolist() == [[1, 1, 0, 1, 1, 1]]
    assert keypoints.isfinite().all()
    assert keypoints[2].eq(0).all() and keypoints[4, 7:9].eq(0).all()
    # statistics come from the present keypoints only, so the invariance survives missing ones
    moved = masking(keypoints=[clip * 0.25 + np.float32(300)])["keypoints"][0]
    torch.testing.assert_close(moved, keypoints, atol=1e-5, rtol=0)
    present = np.isfinite(clip).all(-1)
    torch.testing.assert_close(keypoints[torch.from_numpy(present)].mean(0), torch.zeros(2), atol=1e-5, rtol=0)


def test_clip_with_every_frame_missing_raises(tokenizer):
    clip = np.full((4, 21, 2), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="every frame of sequence 1 is missing"):
        make_processor(tokenizer, missing_keypoints="mask")(keypoints=[random_clips(3)[0], clip])


# Clips longer than max_frames


def test_sample_keeps_frames_spread_uniformly_with_first_and_last(tokenizer):
    sampler = make_processor(tokenizer, missing_keypoints="mask", normalize_keypoints=False)
    keypoints = frame_numbered_keypoints(31)
    keypoints[4] = np.nan  # kept (frame 4 lands at position 2), so position 2 is masked
    keypoints[5] = np.nan  # dropped, so it masks nothing
    batch, messages = caught_warnings(
        lambda: sampler(keypoints=[keypoints], frame_features=[frame_numbered_features(31)])
    )
    kept = list(range(0, 31, 2))
    assert messages == ["Sequence 0 has 31 frames > max_frames=16; resampling it uniformly."]
    assert batch["frame_features"][0, :, 0].tolist() == kept
    assert batch["keypoints"][0, :, 0, 0].tolist() == [0 if frame == 4 else frame for frame in kept]
    assert batch["frame_mask"].tolist() == [[0 if frame == 4 else 1 for frame in kept]]


def test_truncate_keeps_the_first_max_frames(tokenizer):
    truncator = make_processor(tokenizer, long_sequence_strategy="truncate")
    batch, messages = caught_warnings(lambda: truncator(frame_features=[frame_numbered_features(40)]))
    assert messages == ["Sequence 0 has 40 frames > max_frames=16; keeping the first frames."]
    assert batch["frame_features"][0, :, 0].tolist() == list(range(16))
    assert batch["frame_mask"].tolist() == [[1] * 16]


def test_error_strategy_raises_naming_frame_count_and_max_frames(tokenizer):
    strict = make_processor(tokenizer, long_sequence_strategy="error")
    with pytest.raises(ValueError, match="Sequence 1 has 17 frames but max_frames is 16"):
        strict(keypoints=random_clips(16, 17))


@pytest.mark.parametrize(
    "strategy, action", [("sample", "resampling them uniformly"), ("truncate", "keeping their first frames")]
)
def test_one_warning_per_batch_names_every_long_clip(tokenizer, strategy, action):
    """A pipeline or demo that resamples most clips to the model's frame budget says so once per call, not per clip."""
    processor = make_processor(tokenizer, long_sequence_strategy=strategy)
    batch, messages = caught_warnings(
        lambda: processor(keypoints=random_clips(40, 3, 20, 16), frame_features=random_features(40, 3, 20, 16))
    )
    assert messages == [f"2 sequences have more frames than max_frames=16: 0 (40), 2 (20); {action}."]
    assert batch["frame_mask"].sum(1).tolist() == [16, 3, 16, 16]


@pytest.mark.parametrize(
    "setting, options",
    [
        ({"long_sequence_strategy": "drop"}, "'sample', 'truncate', 'error'"),
        ({"missing_keypoints": "zero"}, "'error', 'mask'"),
    ],
)
def test_unknown_strategy_raises_listing_the_options(tokenizer, setting, options):
    with pytest.raises(ValueError, match=re.escape(options)):
        make_processor(tokenizer, **setting)(keypoints=random_clips(3))


# Frame features


def test_features_alone_are_padded_with_a_mask_over_real_frames(processor):
    features = random_features(4, 2)
    batch = processor(frame_features=features)
    assert set(batch) == {"frame_features", "frame_mask"}
    assert batch["frame_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert torch.equal(batch["frame_features"][0], torch.from_numpy(features[0]))
    assert torch.equal(batch["frame_features"][1, :2], torch.from_numpy(features[1]))
    assert batch["frame_features"][1, 2:].eq(0).all()


@pytest.mark.parametrize("shape", [(5, 7), (8,), (5, 8, 1)], ids=["wrong-F", "1d", "3d"])
def test_malformed_features_raise_naming_sequence_and_expected_shape(processor, shape):
    with pytest.raises(ValueError, match=rf"sequence 0 have shape {re.escape(str(shape))}; expected \(frames, 8\)"):
        processor(frame_features=[np.zeros(shape, dtype=np.float32)])


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_features_raise(processor, bad_value):
    features = random_features(3, 5)
    features[1][2, 6] = bad_value
    with pytest.raises(ValueError, match="sequence 1 contain NaN or inf"):
        processor(frame_features=features)


def test_keypoint_and_feature_frame_counts_of_a_clip_must_match(processor):
    with pytest.raises(ValueError, match="Sequence 1 has 5 keypoint frames but 6 feature frames"):
        processor(keypoints=random_clips(3, 5), frame_features=random_features(3, 6))


def test_keypoint_and_feature_batch_sizes_must_match(processor):
    with pytest.raises(ValueError, match="Got 2 keypoint sequences but 1 feature sequences"):
        processor(keypoints=random_clips(3, 5), frame_features=random_features(3))


# Batch sizes across modalities


@pytest.mark.parametrize(
    "inputs",
    [
        {"text": ["a", "b"], "images": [Image.new("RGB", (8, 8))]},
        {"text": ["a"], "keypoints": random_clips(3, 4)},
        {"text": ["a", "b"], "frame_features": random_features(3)},
        {"images": [Image.new("RGB", (8, 8))], "keypoints": random_clips(3, 4)},
    ],
    ids=["text-images", "text-keypoints", "text-features", "images-keypoints"],
)
def test_inputs_of_different_batch_sizes_raise(processor, inputs):
    with pytest.raises(ValueError, match="different batch sizes"):
        processor(**inputs)


def test_no_input_raises(processor):
    with pytest.raises(ValueError, match="Pass text, images, keypoints or frame_features"):
        processor()


# Serialisation


def test_save_and_load_keep_every_setting_and_the_outputs(tokenizer, tmp_path):
    settings = dict(
        max_text_length=12, long_sequence_strategy="truncate", missing_keypoints="mask", normalize_keypoints=False,
        center_frame_features=True,
    )
    original = make_processor(tokenizer, **settings)
    original.save_pretrained(tmp_path)
    loaded = VLPProcessor.from_pretrained(tmp_path)
    expected = dict(settings, max_frames=16, num_keypoints=21, keypoint_dim=2, feature_dim=8)
    assert {name: getattr(loaded, name) for name in expected} == expected

    clips = random_clips(20, 3)
    clips[1][1] = np.nan
    inputs = dict(
        text=["hello " * 30, "a dog"],
        images=[Image.new("L", (50, 20), 90), Image.new("RGBA", (300, 17), (1, 2, 3, 4))],
        keypoints=clips,
        frame_features=random_features(20, 3),
    )
    (before, _), (after, _) = caught_warnings(lambda: original(**inputs)), caught_warnings(lambda: loaded(**inputs))
    assert set(after) == set(before)
    for name in before:
        assert torch.equal(after[name], before[name]), name


# The processed batch feeds the model


def test_processed_batch_runs_through_the_vlp_model(processor):
    config = tiny_vlp_config(text_config=tiny_text_config(vocab_size=30522, hidden_size=32, num_layers=1))
    assert (config.sequence_config.feature_dim, config.sequence_config.max_frames) == (8, 16)
    assert config.vision_config.image_size == 32
    model = VLPModel(config).eval()
    images = [Image.new("L", (50, 20), 30), Image.new("RGBA", (300, 17), (5, 6, 7, 128)), Image.new("P", (33, 33), 2)]
    keypoints, features = random_clips(5, 9, 16), random_features(5, 9, 16)
    batch = processor(
        text=["a man signs hello", "good morning", "thank you very much"],
        images=images,
        keypoints=keypoints,
        frame_features=features,
    )
    first_alone = processor(images=images[:1], keypoints=keypoints[:1], frame_features=features[:1])
    with torch.no_grad():
        output = model(**batch, return_loss=True)
        visual = model.get_visual_features(**{name: batch[name] for name in VISUAL_INPUTS})
        visual_alone = model.get_visual_features(**first_alone)
    assert output.loss.isfinite() and output.logits_per_visual.shape == (3, 3)
    # the padding the batch adds to the 5-frame clip is masked out
    torch.testing.assert_close(visual[0], visual_alone[0], atol=1e-5, rtol=1e-5)
