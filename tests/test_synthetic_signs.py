"""The embedded sign language: continuous signing, compositional sentences, and splits that hold out sentences and
signers for real."""

import time
from collections import defaultdict

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from data import SENTENCE_POOL, VOCABULARY, make_signs_dataset, make_signs_splits, sign_sequence_features
from data.synthetic_signs import (
    EVAL_SPLITS,
    NUM_TRAIN_SENTENCES,
    _continuous_motion,
    _SignerStyle,
    _word_motion,
)


def columns(dataset) -> dict[str, np.ndarray]:
    """All rows at once as numpy columns (variable-length arrays as object arrays)."""
    return dataset.with_format("numpy")[:]


@pytest.fixture(scope="module")
def splits():
    generated = make_signs_splits(400, 100, seed=0, occlusion_rate=0.3)
    return {"features": generated["train"].features} | {name: columns(split) for name, split in generated.items()}


def test_schema_dtypes_and_lengths(splits):
    assert splits["features"] == sign_sequence_features(21, 2, 32)
    assert set(splits) - {"features"} == {"train", *EVAL_SPLITS}
    train = splits["train"]
    for keypoints, features in zip(train["keypoints"], train["features"]):
        assert keypoints.dtype == features.dtype == np.float32
        assert keypoints.shape[1:] == (21, 2) and features.shape == (len(keypoints), 32)
        assert 20 <= len(keypoints) <= 160 and np.isfinite(features).all()
    assert [SENTENCE_POOL[sentence_id] for sentence_id in train["sentence_id"]] == train["sentence"].tolist()
    plain = make_signs_dataset(3, num_keypoints=5, keypoint_dim=3, feature_dim=None)
    assert "features" not in plain.column_names and columns(plain)["keypoints"][0].shape[1:] == (5, 3)


def test_language_is_larger_and_compositional():
    assert 80 <= len(VOCABULARY) <= 120
    assert len(set(SENTENCE_POOL)) == len(SENTENCE_POOL) >= 1500
    lengths = [len(sentence.split()) for sentence in SENTENCE_POOL]
    assert min(lengths) == 4 and max(lengths) >= 8
    assert sum(" not " in sentence for sentence in SENTENCE_POOL) > 200  # negation
    assert sum(sentence.endswith(("tomorrow", "next week", "every day")) for sentence in SENTENCE_POOL) > 100  # time


def test_unseen_sentence_split_holds_out_sentences_but_no_words(splits):
    train_sentences = set(SENTENCE_POOL[:NUM_TRAIN_SENTENCES])
    assert set(splits["train"]["sentence"]) <= train_sentences
    unseen = splits["unseen_sentences"]
    assert not set(unseen["sentence"]) & train_sentences
    assert set(unseen["sentence_id"]) <= set(range(NUM_TRAIN_SENTENCES, len(SENTENCE_POOL)))
    # every word of every held-out sentence is signed in training sentences, in several contexts
    contexts = defaultdict(set)
    for sentence in train_sentences:
        for word in sentence.split():
            contexts[word].add(sentence)
    test_words = {word for sentence in SENTENCE_POOL[NUM_TRAIN_SENTENCES:] for word in sentence.split()}
    assert all(len(contexts[word]) >= 5 for word in test_words)
    assert set(unseen["signer_id"]) <= set(splits["train"]["signer_id"])


def test_seen_sentence_and_unseen_signer_splits(splits):
    train = splits["train"]
    for name in ("seen_sentences", "unseen_signers"):
        assert set(splits[name]["sentence"]) <= set(train["sentence"])  # sentences that occur in this training set
    assert set(splits["seen_sentences"]["signer_id"]) <= set(train["signer_id"]) == set(range(8))
    assert set(splits["unseen_signers"]["signer_id"]) == {8, 9, 10, 11}
    sample_ids = [set(split["sample_id"]) for name, split in splits.items() if name != "features"]
    assert sum(map(len, sample_ids)) == len(set().union(*sample_ids))


def test_generation_is_deterministic_and_fast(splits):
    start = time.perf_counter()
    again = columns(make_signs_dataset(300, seed=0, occlusion_rate=0.3))
    assert time.perf_counter() - start < 3.0
    other = columns(make_signs_dataset(30, seed=1))
    train = splits["train"]
    for column in ("keypoints", "features"):
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(again[column], train[column]))
    assert again["sentence"][:30].tolist() != other["sentence"].tolist()


def test_signing_is_continuous_with_varying_tempo():
    """A word's frames depend on its neighbour (co-articulation), and one word takes different frame counts."""
    style = _SignerStyle.sample(0, 0, 21, 32, breadth=1.0)
    rng = np.random.default_rng(0)
    after_a, labels_a = _continuous_motion(["i", "eat"], style, rng)
    after_b, labels_b = _continuous_motion(["doctor", "eat"], style, rng)
    eat_a, eat_b = after_a[labels_a == VOCABULARY.index("eat")], after_b[labels_b == VOCABULARY.index("eat")]
    frames = min(len(eat_a), len(eat_b))
    assert not np.allclose(eat_a[0], eat_b[0])  # starts pulled towards the previous sign
    assert np.abs(eat_a[frames - 1] - eat_b[frames - 1]).max() < np.abs(eat_a[0] - eat_b[0]).max()  # and fades
    durations = {len(_continuous_motion(["eat"], style, rng)[0]) for _ in range(20)}
    assert len(durations) >= 3 and len(_word_motion("eat")) in range(6, 11)
    assert (labels_a == -1).sum() >= 1  # a transition between the two signs


def test_capture_drops_frames_and_occludes_hands(splits):
    train = splits["train"]
    occluded = [np.isnan(keypoints).any() for keypoints in train["keypoints"]]
    assert 0.15 < np.mean(occluded) < 0.45
    whole_hand = [np.isnan(keypoints).all(axis=(1, 2)).any() for keypoints in train["keypoints"]]
    assert 0 < sum(whole_hand) < sum(occluded)
    assert not any(np.isnan(keypoints).any() for keypoints in columns(make_signs_dataset(50, seed=0))["keypoints"])


def test_unseen_signers_differ_more_than_training_signers():
    def spread(signer_ids, breadth):
        styles = [_SignerStyle.sample(3, signer_id, 21, 32, breadth) for signer_id in signer_ids]
        return np.std([np.log(style.tempo) for style in styles]), np.std([style.amplitude for style in styles])

    train_spread, unseen_spread = spread(range(200), 1.0), spread(range(200, 400), 1.6)
    assert all(unseen > 1.3 * seen for seen, unseen in zip(train_spread, unseen_spread))
    handedness = [_SignerStyle.sample(3, signer_id, 21, 32, 1.0).left_handed for signer_id in range(200)]
    assert 0.1 < np.mean(handedness) < 0.4


def test_first_word_is_recognisable_for_unseen_signers(splits):
    """Words are motions, not noise: a 1-NN on the opening frames (relative to the first wrist position, in units of
    the first hand's size) names the first word of clips by unseen signers well above the majority rate, although
    some of them sign mirrored and none of them was seen."""

    def opening_motion(dataset) -> np.ndarray:
        rows = []
        for keypoints in dataset["keypoints"]:
            start = np.nan_to_num(keypoints[:5] - keypoints[0, :1])
            rows.append((start / (np.linalg.norm(start[0], axis=-1).mean() + 1e-6)).ravel())
        return np.stack(rows)

    def first_words(dataset) -> np.ndarray:
        return np.array([sentence.split()[0] for sentence in dataset["sentence"]])

    train, unseen = splits["train"], splits["unseen_signers"]
    classifier = KNeighborsClassifier(n_neighbors=1).fit(opening_motion(train), first_words(train))
    accuracy = (classifier.predict(opening_motion(unseen)) == first_words(unseen)).mean()
    majority = max(np.mean(first_words(unseen) == word) for word in set(first_words(unseen)))
    assert accuracy > 1.5 * majority


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="keypoint_dim"):
        make_signs_dataset(2, keypoint_dim=4)
    with pytest.raises(ValueError, match="num_sentences"):
        make_signs_dataset(2, num_sentences=0)
    with pytest.raises(ValueError, match="occlusion_rate"):
        make_signs_dataset(2, occlusion_rate=1.5)
    with pytest.raises(ValueError, match="num_eval_signers"):
        make_signs_splits(2, 2, num_eval_signers=0)
