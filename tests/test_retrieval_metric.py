"""Tests for the `metrics/retrieval` evaluate module (COCO-style image<->text retrieval)."""

from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch


METRIC_PATH = str(Path(__file__).resolve().parents[1] / "metrics" / "retrieval")


@pytest.fixture
def retrieval():
    return evaluate.load(METRIC_PATH, keep_in_memory=True)


def _unit(angles_in_degrees):
    radians = np.deg2rad(np.asarray(angles_in_degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def _noisy_pairs(num_images, texts_per_image, dim, noise, seed):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_images, dim)).astype(np.float32)
    image_index = np.repeat(np.arange(num_images), texts_per_image)
    texts = (images[image_index] + noise * rng.standard_normal((len(image_index), dim))).astype(np.float32)
    return texts, image_index, images


def _brute_force_ranks(texts, image_index, images):
    """Reference ranks from the full N x N matrix, one query at a time."""
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    scores = texts.astype(np.float64) @ images.astype(np.float64).T
    t2i = np.array([1 + np.sum(scores[t] > scores[t, image]) for t, image in enumerate(image_index)])
    i2t = np.array(
        [
            min(1 + np.sum(scores[:, image] > scores[t, image]) for t in np.flatnonzero(image_index == image))
            for image in range(len(images))
        ]
    )
    positives = scores[np.arange(len(texts)), image_index]
    negatives = scores[np.arange(len(images))[None, :] != image_index[:, None]]
    return i2t, t2i, positives.mean(), negatives.mean()


def test_perfect_embeddings_rank_everything_first(retrieval):
    images = np.eye(8, dtype=np.float32)
    image_index = np.repeat(np.arange(8), 5)
    results = retrieval.compute(
        text_embeddings=images[image_index], image_index=image_index, image_embeddings=images, ks=[1, 5, 10]
    )
    for direction in ("i2t", "t2i"):
        assert results[f"{direction}_R@1"] == 100.0
        assert results[f"{direction}_MedR"] == 1.0
        assert results[f"{direction}_MeanR"] == 1.0
    assert results["pos_sim"] == pytest.approx(1.0)
    assert results["neg_sim"] == pytest.approx(0.0)
    assert (results["num_images"], results["num_texts"]) == (8, 40)


def test_hand_built_ranks_with_ties(retrieval):
    # Images at 0, 90 and 180 degrees. Text 2 ties image 0 with its true image 2 and text 3 ties its true
    # image 0 with image 1: a tie is not "strictly higher", so it does not push the true match down.
    images = _unit([0, 90, 180])
    texts = _unit([0, 0, 90, 45])
    results = retrieval.compute(text_embeddings=texts, image_index=[0, 1, 2, 0], image_embeddings=images, ks=[1, 2, 3])
    # t2i ranks [1, 2, 2, 1]; i2t ranks [1, 3, 1] (image 1's caption at 0 degrees is beaten by texts 2 and 3 only).
    expected = {
        "t2i_R@1": 50.0,
        "t2i_R@2": 100.0,
        "t2i_R@3": 100.0,
        "t2i_MedR": 1.0,
        "t2i_MeanR": 1.5,
        "i2t_R@1": 200.0 / 3,
        "i2t_R@2": 200.0 / 3,
        "i2t_R@3": 100.0,
        "i2t_MedR": 1.0,
        "i2t_MeanR": 5.0 / 3,
        "pos_sim": (1.0 + 0.0 + 0.0 + np.sqrt(0.5)) / 4,
        "neg_sim": 0.0,
        "num_images": 3,
        "num_texts": 4,
    }
    assert results == pytest.approx(expected, abs=1e-6)


def test_image_to_text_hits_if_any_caption_is_in_top_k(retrieval):
    images = _unit([0, 90])
    # Image 0's best caption (20 deg) is beaten only by image 1's caption at 10 deg; its other four are far away.
    texts = _unit([20, 80, 85, 88, 89, 10, 60, 90, 91, 92])
    image_index = np.repeat([0, 1], 5)
    results = retrieval.compute(text_embeddings=texts, image_index=image_index, image_embeddings=images, ks=[1, 2])
    assert results["i2t_R@1"] == 50.0
    assert results["i2t_R@2"] == 100.0
    assert results["i2t_MeanR"] == 1.5
    # t2i ranks [1, 2, 2, 2, 2, 2, 1, 1, 1, 1]
    assert results["t2i_R@1"] == 50.0
    assert results["t2i_MeanR"] == 1.5
    assert results["t2i_MedR"] == 1.0


def test_random_embeddings_score_near_chance(retrieval):
    rng = np.random.default_rng(0)
    texts = rng.standard_normal((2000, 32)).astype(np.float32)
    images = rng.standard_normal((400, 32)).astype(np.float32)
    image_index = np.repeat(np.arange(400), 5)
    results = retrieval.compute(text_embeddings=texts, image_index=image_index, image_embeddings=images)
    # Chance: t2i R@10 = 10 / 400; i2t R@10 = 1 - (1 - 10 / 2000) ** 5, both about 2.5%.
    assert results["t2i_R@1"] < 1.5
    assert results["t2i_R@10"] == pytest.approx(2.5, abs=1.5)
    assert results["i2t_R@10"] == pytest.approx(2.5, abs=1.5)
    assert results["t2i_MeanR"] == pytest.approx(200.5, rel=0.1)
    assert abs(results["pos_sim"] - results["neg_sim"]) < 0.02


def test_chunk_size_does_not_change_results(retrieval):
    texts, image_index, images = _noisy_pairs(60, 5, dim=16, noise=1.5, seed=2)
    inputs = dict(text_embeddings=texts, image_index=image_index, image_embeddings=images, ks=[1, 5, 10])
    one_by_one = retrieval.compute(**inputs, chunk_size=1)
    all_at_once = retrieval.compute(**inputs, chunk_size=100_000)
    ranks_only = [key for key in one_by_one if key not in ("pos_sim", "neg_sim")]
    assert {key: one_by_one[key] for key in ranks_only} == {key: all_at_once[key] for key in ranks_only}
    assert one_by_one == pytest.approx(all_at_once, rel=1e-12)


def test_matches_brute_force_reference(retrieval):
    texts, image_index, images = _noisy_pairs(200, 5, dim=16, noise=1.5, seed=3)
    results = retrieval.compute(
        text_embeddings=texts, image_index=image_index, image_embeddings=images, ks=[1, 5, 10], chunk_size=64
    )
    i2t, t2i, positive_mean, negative_mean = _brute_force_ranks(texts, image_index, images)
    assert 1 < t2i.mean() < 100, "the test data should give non-trivial ranks"
    for prefix, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            assert results[f"{prefix}_R@{k}"] == pytest.approx(100.0 * np.mean(ranks <= k))
        assert results[f"{prefix}_MedR"] == np.floor(np.median(ranks))
        assert results[f"{prefix}_MeanR"] == pytest.approx(ranks.mean())
    assert results["pos_sim"] == pytest.approx(positive_mean, abs=1e-6)
    assert results["neg_sim"] == pytest.approx(negative_mean, abs=1e-6)


def test_add_batch_accumulates_like_single_compute(retrieval):
    texts, image_index, images = _noisy_pairs(50, 5, dim=16, noise=1.0, seed=4)
    single = retrieval.compute(text_embeddings=texts, image_index=image_index, image_embeddings=images)
    for start in range(0, len(texts), 64):
        retrieval.add_batch(
            text_embeddings=torch.from_numpy(texts[start : start + 64]), image_index=image_index[start : start + 64]
        )
    accumulated = retrieval.compute(image_embeddings=torch.from_numpy(images))
    assert accumulated == single


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_embeddings": np.ones((4, 3), dtype=np.float32)}, "dimensions differ"),
        ({"image_index": [0, 1, 2, 4]}, r"outside \[0, 3\]"),
        ({"image_index": [0, 1, 2, -1]}, r"outside \[0, 3\]"),
        ({"image_index": [0, 1, 1, 2]}, "1 of 4 images have no text"),
        ({"text_embeddings": [[1.0, 0.0], [float("nan"), 1.0], [0.0, 1.0], [1.0, 1.0]]}, "text_embeddings.*NaN"),
        ({"image_embeddings": np.array([[1, 0], [0, 1], [1, 1], [np.nan, 0]])}, "image_embeddings.*NaN"),
        ({"text_embeddings": [], "image_index": []}, "No texts"),
        ({"image_embeddings": np.zeros((0, 2))}, "image_embeddings` is empty"),
        ({"image_embeddings": None}, "image_embeddings` is required"),
        ({"ks": [0, 5]}, "positive integers"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_invalid_inputs_raise_clear_errors(retrieval, overrides, message):
    inputs = {
        "text_embeddings": _unit([0, 90, 180, 270]),
        "image_index": [0, 1, 2, 3],
        "image_embeddings": _unit([0, 90, 180, 270]),
    }
    inputs.update(overrides)
    with pytest.raises(ValueError, match=message):
        retrieval.compute(**inputs)
