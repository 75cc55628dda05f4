"""Tests for the `metrics/retrieval` evaluate module (COCO-style image<->text retrieval)."""

import itertools
from math import comb
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
    # Images at 0, 90 and 180 degrees. Text 2 ties image 0 with its true image 2 and text 3 ties its true image 0
    # with image 1: a tie of two is won half the time, so it counts half a hit at the first place it can reach.
    # cos(90 deg) is 6e-17, not 0: scores equal up to rounding are ties.
    images = _unit([0, 90, 180])
    texts = _unit([0, 0, 90, 45])
    results = retrieval.compute(text_embeddings=texts, image_index=[0, 1, 2, 0], image_embeddings=images, ks=[1, 2, 3])
    # t2i expected ranks [1, 2, 2.5, 1.5]; i2t [1.5, 3.5, 1]: image 0's caption ties text 1, and image 1's caption
    # (at 0 degrees) is beaten by texts 2 and 3 and tied with text 0.
    expected = {
        "t2i_R@1": 37.5,
        "t2i_R@2": 87.5,
        "t2i_R@3": 100.0,
        "t2i_MedR": 1.0,
        "t2i_MeanR": 1.75,
        "i2t_R@1": 50.0,
        "i2t_R@2": 200.0 / 3,
        "i2t_R@3": 250.0 / 3,
        "i2t_MedR": 1.0,
        "i2t_MeanR": 2.0,
        "pos_sim": (1.0 + 0.0 + 0.0 + np.sqrt(0.5)) / 4,
        "neg_sim": 0.0,
        "num_images": 3,
        "num_texts": 4,
    }
    assert results == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "direction",
    [
        np.ones(16, dtype=np.float32),
        np.random.default_rng(0).standard_normal(16).astype(np.float32),
    ],
    ids=["ones", "random-direction"],
)
@pytest.mark.parametrize("scaled", [False, True], ids=["same-rows", "rows-scaled-in-float32"])
def test_identical_embeddings_score_exactly_chance(retrieval, direction, scaled):
    """A collapsed model (every embedding the same) must score chance, not 100 %. Scaled copies differ only by
    float32 rounding after normalisation, which must not break the tie."""
    rng = np.random.default_rng(1)
    texts, images = np.tile(direction, (100, 1)), np.tile(direction, (20, 1))
    if scaled:
        texts = (texts * rng.uniform(0.1, 10.0, (100, 1))).astype(np.float32)
        images = (images * rng.uniform(0.1, 10.0, (20, 1))).astype(np.float32)
    image_index = np.repeat(np.arange(20), 5)
    results = retrieval.compute(
        text_embeddings=texts, image_index=image_index, image_embeddings=images, ks=[1, 5, 10], chunk_size=7
    )
    # t2i: the true image is one of 20 tied images. i2t: the 5 captions are among 100 tied texts.
    expected = {
        "t2i_R@1": 5.0,
        "t2i_R@5": 25.0,
        "t2i_R@10": 50.0,
        "t2i_MedR": 10.0,  # expected rank 10.5 for every query, rounded down
        "t2i_MeanR": 10.5,
        "i2t_R@1": 5.0,
        "i2t_R@5": 100.0 * (1 - comb(95, 5) / comb(100, 5)),
        "i2t_R@10": 100.0 * (1 - comb(95, 10) / comb(100, 10)),
        "i2t_MedR": 16.0,
        "i2t_MeanR": 1 + 95 / 6,
    }
    assert {key: results[key] for key in expected} == pytest.approx(expected, rel=1e-12)


def _brute_force_with_ties(texts, image_index, images, ks, tolerance=1e-6):
    """Reference for the tie rule: every placement of a query's true candidates among its tie, averaged.

    Returns `{direction: (hit rate per k, expected ranks)}` and how many queries had a tie.
    """
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    scores = texts.astype(np.float64) @ images.astype(np.float64).T
    num_tied_queries = 0

    def expected(query_scores, is_true):
        nonlocal num_tied_queries
        best = query_scores[is_true].max()
        in_tie = np.abs(query_scores - best) <= tolerance
        above = np.sum(query_scores > best + tolerance)
        num_tied_queries += in_tie.sum() > 1
        ranks = [
            above + 1 + min(true_places)
            for true_places in itertools.combinations(range(in_tie.sum()), np.sum(in_tie & is_true))
        ]
        return [np.mean([rank <= k for rank in ranks]) for k in ks], np.mean(ranks)

    t2i = [expected(scores[t], np.arange(len(images)) == image) for t, image in enumerate(image_index)]
    i2t = [expected(scores[:, image], image_index == image) for image in range(len(images))]
    summaries = {}
    for prefix, per_query in (("t2i", t2i), ("i2t", i2t)):
        hits = np.array([query_hits for query_hits, _ in per_query])
        summaries[prefix] = (100.0 * hits.mean(axis=0), np.array([rank for _, rank in per_query]))
    return summaries, num_tied_queries


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_ties_match_a_brute_force_average_over_tie_orders(retrieval, chunk_size):
    # Embeddings drawn from 4 integer directions: many exact ties, and captions per image from 1 to 4.
    rng = np.random.default_rng(5)
    directions = np.array([[1, 0, 1, -1], [0, 1, 1, 0], [1, 1, 0, 0], [-1, 0, 1, 1]], dtype=np.float32)
    images = directions[rng.integers(0, 4, 15)]
    image_index = np.concatenate([np.arange(15), rng.integers(0, 15, 25)])
    texts = directions[rng.integers(0, 4, len(image_index))]
    ks = [1, 2, 3, 5, 10]
    results = retrieval.compute(
        text_embeddings=texts, image_index=image_index, image_embeddings=images, ks=ks, chunk_size=chunk_size
    )
    reference, num_tied_queries = _brute_force_with_ties(texts, image_index, images, ks)
    assert num_tied_queries > 40, "the test data should be full of ties"
    for prefix, (recalls, ranks) in reference.items():
        for k, recall in zip(ks, recalls):
            assert results[f"{prefix}_R@{k}"] == pytest.approx(recall, rel=1e-12), f"{prefix}_R@{k}"
        assert results[f"{prefix}_MeanR"] == pytest.approx(ranks.mean(), rel=1e-12)
        assert results[f"{prefix}_MedR"] == np.floor(np.median(ranks))


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
    assert retrieval.compute(**inputs) == all_at_once  # the default: every text in one block at this size
    ranks_only = [key for key in one_by_one if key not in ("pos_sim", "neg_sim")]
    assert {key: one_by_one[key] for key in ranks_only} == {key: all_at_once[key] for key in ranks_only}
    assert one_by_one == pytest.approx(all_at_once, rel=1e-12)


def test_matches_brute_force_reference(retrieval):
    """Continuous random embeddings have no ties, so ranks follow the plain rule: 1 + candidates scoring higher."""
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


@pytest.mark.parametrize("as_tensor", [False, True])
def test_array_path_matches_compute(retrieval, as_tensor):
    """`compute_arrays` skips the Arrow round trip; it must give `compute`'s results exactly, float32 or float64,
    numpy or torch, and leave the caller's arrays untouched (the rows are normalised a chunk at a time)."""
    texts, image_index, images = _noisy_pairs(80, 5, dim=16, noise=1.5, seed=5)
    through_arrow = retrieval.compute(
        text_embeddings=texts, image_index=image_index, image_embeddings=images, ks=[1, 5], chunk_size=33
    )
    for dtype in (np.float32, np.float64):
        text_input, image_input = texts.astype(dtype), images.astype(dtype)
        text_copy = text_input.copy()
        if as_tensor:
            text_input, image_input, index_input = map(torch.from_numpy, (text_input, image_input, image_index))
        else:
            index_input = image_index
        direct = retrieval.compute_arrays(text_input, index_input, image_input, ks=[1, 5], chunk_size=33)
        assert direct == pytest.approx(through_arrow, rel=1e-12)
        np.testing.assert_array_equal(np.asarray(text_input), text_copy)


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
        ({"text_embeddings": [[1.0, 0.0], [float("nan"), 1.0], [0.0, 1.0], [1.0, 1.0]]}, "text_embeddings` row 1.*NaN"),
        ({"image_embeddings": np.array([[1, 0], [0, 1], [1, 1], [np.nan, 0]])}, "image_embeddings` row 3.*NaN"),
        ({"image_embeddings": np.array([[1, 0], [0, 1], [1, 1], [np.inf, 0]])}, "image_embeddings` row 3.*infinite"),
        ({"text_embeddings": [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]}, "text_embeddings` row 2 is all zeros"),
        ({"image_embeddings": np.zeros((4, 2))}, r"image_embeddings` row 0 is all zeros \(4 such rows\)"),
        ({"text_embeddings": [], "image_index": []}, "No texts"),
        ({"image_embeddings": np.zeros((0, 2))}, "image_embeddings` is empty"),
        ({"image_embeddings": None}, "image_embeddings` is required"),
        ({"ks": [0, 5]}, "positive integers"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"tie_tolerance": -1e-6}, "tie_tolerance"),
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
