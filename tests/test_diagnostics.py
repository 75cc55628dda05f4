"""Tests for the collapse diagnostics shared by the VLP and Sign2Text trainers."""

import logging
import warnings

import numpy as np
import pytest
import torch

from train import diagnostics
from train.diagnostics import (
    CollapseCallback,
    CollapseMonitor,
    CollapseWarning,
    embedding_check_arguments,
    embedding_collapse_stats,
    generation_collapse_stats,
)
from train.evaluation import EncodedPairs, retrieval_report


def _collapsed_pairs(count=64, dim=32, seed=0):
    """Every embedding is one direction plus tiny noise: the narrow cone of a collapsed model."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    visual = direction + 0.02 * rng.standard_normal((count, dim))
    text = direction + 0.02 * rng.standard_normal((count, dim))
    return visual, text


def _separated_pairs(count=64, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    visual = rng.standard_normal((count, dim))
    return visual, visual + 0.1 * rng.standard_normal((count, dim))


def test_embedding_stats_on_a_hand_made_example():
    visual = np.eye(3)
    text = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    stats = embedding_collapse_stats(visual, text, [0, 0, 1, 2])
    # True pairs: 1, 1, cos45, 1. Negatives: 8 pairs, only text 2 vs visual 2 is non-zero (cos45).
    cos45 = 1 / np.sqrt(2)
    assert stats["pos_sim"] == pytest.approx((3 + cos45) / 4)
    assert stats["neg_sim"] == pytest.approx(cos45 / 8)
    assert stats["margin"] == pytest.approx(stats["pos_sim"] - stats["neg_sim"])
    assert stats["visual_self_sim"] == pytest.approx(0.0)
    # Text pairs: (0,1)=1, (2,3)=cos45, the other four 0.
    assert stats["text_self_sim"] == pytest.approx((1 + cos45) / 6)


def test_positives_from_visual_is_the_same_pairing_seen_from_the_other_side():
    rng = np.random.default_rng(0)
    sentences, clips = rng.standard_normal((3, 8)), rng.standard_normal((7, 8))
    clip_to_sentence = np.array([0, 0, 1, 1, 1, 2, 2])
    from_visual = embedding_collapse_stats(clips, sentences, clip_to_sentence, positives_from="visual")
    from_text = embedding_collapse_stats(sentences, clips, clip_to_sentence)  # roles swapped, same pairs
    for key in ("pos_sim", "neg_sim", "margin"):
        assert from_visual[key] == pytest.approx(from_text[key])
    assert from_visual["visual_self_sim"] == pytest.approx(from_text["text_self_sim"])


def test_embedding_stats_accept_tensors_and_default_to_row_pairs():
    visual, text = _separated_pairs(count=8)
    as_arrays = embedding_collapse_stats(visual, text)
    as_tensors = embedding_collapse_stats(torch.from_numpy(visual).float(), torch.from_numpy(text).float())
    for key, value in as_arrays.items():
        assert as_tensors[key] == pytest.approx(value, abs=1e-6)
    with pytest.raises(ValueError, match="pass `positives`"):
        embedding_collapse_stats(visual, text[:5])
    with pytest.raises(ValueError, match="positives_from"):
        embedding_collapse_stats(visual, text, positives_from="image")


def test_collapsed_embeddings_warn_with_the_numbers():
    visual, text = _collapsed_pairs()
    with pytest.warns(CollapseWarning, match="Embedding collapse") as record:
        stats = CollapseMonitor(margin_threshold=0.1).check_embeddings(visual, text)
    assert stats["collapsed"] and stats["margin"] < 0.1 and stats["visual_self_sim"] > 0.95
    message = str(record[0].message)
    for number in (stats["pos_sim"], stats["neg_sim"], stats["margin"], stats["visual_self_sim"]):
        assert f"{number:.3f}" in message
    assert "temperature" in message and "negatives" in message


def test_separated_embeddings_do_not_warn():
    visual, text = _separated_pairs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = CollapseMonitor().check_embeddings(visual, text)
    assert not stats["collapsed"] and stats["margin"] > 0.8 and abs(stats["visual_self_sim"]) < 0.1


def test_distinct_n_on_a_hand_made_example():
    stats = generation_collapse_stats(["a b a", "a  b", "c"])
    # Unigrams a b a a b c: 3 distinct of 6. Bigrams (a b) (b a) (a b): 2 distinct of 3.
    assert stats["distinct_1"] == pytest.approx(3 / 6)
    assert stats["distinct_2"] == pytest.approx(2 / 3)
    assert stats["distinct_output_share"] == 1.0
    assert stats["num_predictions"] == 3
    repeated = generation_collapse_stats(["x y", "x  y ", "z"])
    assert repeated["distinct_output_share"] == pytest.approx(2 / 3)
    assert repeated["most_common_output"] == "x y" and repeated["most_common_share"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="non-empty"):
        generation_collapse_stats([])


def test_identical_generations_warn():
    predictions = ["can you tell me where the pain is"] * 18 + ["where is the doctor"] * 2
    with pytest.warns(CollapseWarning, match="Generation collapse") as record:
        stats = CollapseMonitor(distinct_threshold=0.5).check_generations(predictions)
    assert stats["collapsed"] and stats["distinct_output_share"] == pytest.approx(0.1)
    message = str(record[0].message)
    assert "10.0%" in message and "90.0%" in message and "can you tell me where the pain is" in message
    assert "visual input" in message


def test_diverse_generations_do_not_warn():
    predictions = [f"i want to eat {word}" for word in ("now", "today", "tomorrow", "later", "soon")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = CollapseMonitor().check_generations(predictions)
    assert not stats["collapsed"]


def test_repeated_references_set_the_bar():
    # Each sentence is signed by four signers: a perfect model repeats outputs and must not be flagged.
    sentences = ("where is the park", "the doctor is tired", "we need water")
    references = [sentence for sentence in sentences for _ in range(4)]
    monitor = CollapseMonitor(distinct_threshold=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not monitor.check_generations(references, references)["collapsed"]
    with pytest.warns(CollapseWarning):
        stats = monitor.check_generations(["where is the park"] * 12, references)
    assert stats["reference_distinct_output_share"] == pytest.approx(0.25)


def test_monitor_reports_through_a_logger(caplog):
    monitor = CollapseMonitor(logger=logging.getLogger("train.test"))
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="train.test"):
        warnings.simplefilter("error")
        monitor.check_generations(["same"] * 10)
        monitor.check_embeddings(*_collapsed_pairs())
    reported = [record.getMessage().split(":")[0] for record in caplog.records]
    assert reported == ["Generation collapse", "Embedding collapse"]


@pytest.mark.parametrize(
    "settings", [{"margin_threshold": float("nan")}, {"distinct_threshold": 0.0}, {"distinct_threshold": 1.5}]
)
def test_invalid_thresholds_raise(settings):
    with pytest.raises(ValueError):
        CollapseMonitor(**settings)


def test_callback_returns_the_numbers_to_log_and_warns_while_training(caplog):
    visual, text = _collapsed_pairs()
    callback = CollapseCallback(
        CollapseMonitor(logger=logging.getLogger("collapse-test")),
        embed=lambda: {"visual_embeds": visual, "text_embeds": text},
        generate=lambda: (["the same sentence"] * 10, [f"sentence {i}" for i in range(10)]),
    )
    with caplog.at_level(logging.INFO):
        logs = callback(step=30)
    assert set(logs) == {"pos_sim", "neg_sim", "margin", "distinct_output_share", "distinct_2"}
    assert logs["margin"] < 0.1 and logs["distinct_output_share"] == pytest.approx(0.1)
    assert "Embedding collapse" in caplog.text and "Generation collapse" in caplog.text
    assert "Collapse check at step 30" in caplog.text


def test_check_arguments_follow_the_side_that_owns_several_items():
    visual, text = torch.randn(2, 4), torch.randn(3, 4)
    captions = embedding_check_arguments(EncodedPairs(visual, text, torch.tensor([0, 0, 1]), "text", ["a", "b", "c"]))
    assert captions["positives_from"] == "text" and captions["positives"].tolist() == [0, 0, 1]
    clips = embedding_check_arguments(EncodedPairs(text, visual, torch.tensor([1, 0, 1]), "visual", ["a", "b"]))
    assert clips["positives_from"] == "visual" and clips["positives"].tolist() == [1, 0, 1]
    CollapseMonitor().check_embeddings(**clips)  # the monitor accepts them as they are


def test_final_check_reuses_the_runs_retrieval_instead_of_computing_it_again(monkeypatch):
    pairs = EncodedPairs(torch.randn(4, 8), torch.randn(8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), "text", list("abcdefgh"))
    retrieval = retrieval_report(pairs, [8])
    monkeypatch.setattr(diagnostics, "load_metric", lambda name: pytest.fail("the retrieval metric ran a second time"))
    stats = CollapseMonitor().check_embeddings(**embedding_check_arguments(pairs, retrieval))
    assert (stats["pos_sim"], stats["neg_sim"]) == (retrieval.headline["pos_sim"], retrieval.headline["neg_sim"])
