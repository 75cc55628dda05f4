"""The CIDEr-D module against pycocoevalcap's scorer (the COCO reference), its tokenisation and its input checks."""

import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest

from data.synthetic_shapes import make_shapes_dataset

cider_scorer = pytest.importorskip("pycocoevalcap.cider.cider", reason="pycocoevalcap is in the `test` extra")

CIDER_DIR = Path(__file__).resolve().parents[1] / "metrics" / "cider"


@pytest.fixture(scope="module")
def cider():
    return evaluate.load(str(CIDER_DIR))


@pytest.fixture(scope="module")
def cider_module(cider):
    """The loaded module file itself, for its tokenizer."""
    return sys.modules[type(cider).__module__]


def reference_cider(predictions, references, tokenize) -> tuple[float, np.ndarray]:
    """pycocoevalcap on the same words (its PTB tokenizer needs Java, so the words are handed over joined)."""
    gts = {i: [" ".join(tokenize(ref)) for ref in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(tokenize(prediction))] for i, prediction in enumerate(predictions)}
    score, scores = cider_scorer.Cider().compute_score(gts, res)
    return 100 * score, 100 * np.asarray(scores)


@pytest.fixture(scope="module")
def fixture_captions() -> tuple[list[str], list[list[str]]]:
    """80 shapes images with 5 captions each; predictions that are exact references, other images' captions,
    shortened, word-repeating, re-cased and punctuated, or empty, and images with fewer references."""
    dataset = make_shapes_dataset(80, seed=3)
    references = [list(captions) for captions in dataset["captions"]]
    rng = np.random.default_rng(0)
    predictions = []
    for index, refs in enumerate(references):
        words = refs[int(rng.integers(len(refs)))].split()
        kind = index % 7
        if kind == 0:
            predictions.append(" ".join(words))
        elif kind == 1:
            predictions.append(references[(index + 1) % len(references)][0])
        elif kind == 2:
            predictions.append(" ".join(words[: max(1, len(words) // 2)]))
        elif kind == 3:
            predictions.append(" ".join(words[:3] * 3))  # CIDEr-D clips repeated n-grams
        elif kind == 4:
            predictions.append(" ".join(words).upper() + "!")
        elif kind == 5:
            predictions.append("")
        else:
            predictions.append(" ".join(rng.permutation(words)))
    for index in range(0, len(references), 5):
        references[index] = references[index][: 1 + index % 4]
    return predictions, references


def test_matches_pycocoevalcap_to_1e6(cider, cider_module, fixture_captions):
    predictions, references = fixture_captions
    results = cider.compute(predictions=predictions, references=references)
    expected, expected_scores = reference_cider(predictions, references, cider_module.tokenize_caption)
    assert 0 < results["cider"] < 1000 and results["num_predictions"] == len(predictions)
    # pycocoevalcap's scale is 1/100 of the reported one; compare on its scale
    assert abs(results["cider"] - expected) / 100 < 1e-6
    np.testing.assert_allclose(np.asarray(results["scores"]) / 100, expected_scores / 100, rtol=0, atol=1e-6)


def test_a_single_reference_string_per_prediction(cider):
    predictions = ["a red circle in the centre", "a big blue star on the left", "a small green box"]
    references = ["a red disc in the middle", "a large blue star on the left", "a tiny green square at the top"]
    results = cider.compute(predictions=predictions, references=references)
    expected, _ = reference_cider(predictions, [[ref] for ref in references], str.split)
    assert abs(results["cider"] - expected) / 100 < 1e-6


def test_tokenisation_lower_cases_and_drops_punctuation(cider, cider_module):
    module = cider_module
    assert module.tokenize_caption("A Red-Circle, in the CENTRE.") == ["a", "red", "circle", "in", "the", "centre"]
    assert module.tokenize_caption("Don't  stop_now") == ["don", "t", "stop", "now"]
    assert module.tokenize_caption("A Red-Circle.", tokenize="none") == ["A", "Red-Circle."]
    refs = [["a red circle", "a red disc"], ["a blue star", "a big blue star"]]
    plain = cider.compute(predictions=["a red circle", "a blue star"], references=refs)
    shouted = cider.compute(predictions=["A RED circle!", "a Blue, star."], references=refs)
    assert shouted["cider"] == pytest.approx(plain["cider"], abs=1e-9)
    untouched = cider.compute(predictions=["A RED circle!", "a Blue, star."], references=refs, tokenize="none")
    assert untouched["cider"] < plain["cider"]
    with pytest.raises(ValueError, match="tokenize must be one of"):
        cider.compute(predictions=["a"], references=[["a"]], tokenize="ptb")


def test_corpus_idf_rewards_the_distinctive_words(cider):
    """Words every image's references share ("a", "picture of") weigh nothing; the rare ones decide the score."""
    references = [[f"a picture of a {colour} circle"] for colour in ("red", "blue", "green", "white")]
    right = cider.compute(predictions=["a red circle"] + [refs[0] for refs in references[1:]], references=references)
    generic = cider.compute(predictions=["a picture of a"] + [refs[0] for refs in references[1:]], references=references)
    assert right["scores"][0] > 0 and generic["scores"][0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("predictions", "references", "error", "message"),
    [
        (["a", "b"], [["a"]], ValueError, "2 predictions but 1 reference sets"),
        (["a"], [[]], TypeError, r"references\[0\]"),
        ([3], [["a"]], TypeError, r"predictions\[0\]"),
        ("a cat", ["a cat"], TypeError, "not a single string"),
        ([], [], ValueError, "empty"),
    ],
)
def test_bad_inputs_are_refused(cider, predictions, references, error, message):
    with pytest.raises(error, match=message):
        cider.compute(predictions=predictions, references=references)
