"""Tests for the text-generation metric modules `metrics/wer`, `metrics/bleu`, `metrics/rouge` and
`train.evaluation.generation_report` (Sign2Text evaluation)."""

import threading
from pathlib import Path

import evaluate
import jiwer
import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from train.evaluation import generation_report, paired_difference

METRICS_DIR = Path(__file__).resolve().parents[1] / "metrics"

PREDICTIONS = [
    "the weather will be sunny tomorrow",
    "in the north it rains",
    "good evening",
    "wind from the west",
    "temperatures between five and ten degrees",
    "tonight clouds in the south and rain",
    "",
    "monday it is friendly and warm",
]
REFERENCES = [
    "Tomorrow the weather will be sunny.",
    "In the north it rains a lot.",
    "Good evening, dear viewers!",
    "Strong wind from the west.",
    "Temperatures between five and twelve degrees.",
    "Tonight clouds in the south, later rain.",
    "Have a nice evening.",
    "On Monday it is friendly and warm.",
]


def _load(name):
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


@pytest.fixture(scope="module")
def wer():
    return _load("wer")


@pytest.fixture(scope="module")
def bleu():
    return _load("bleu")


@pytest.fixture(scope="module")
def rouge():
    return _load("rouge")


# ----------------------------------------------------------------------------------------------------------- WER


def test_wer_is_corpus_level_not_mean_of_sentences(wer):
    predictions = ["goodbye", "the cat sat on mat", "a big dog"]
    references = ["Hello!", "The cat sat on the mat.", "a dog"]
    # By hand: 1 substitution (1 ref word), 1 deletion (6 ref words), 1 insertion (2 ref words): 3 errors / 9 words.
    results = wer.compute(predictions=predictions, references=references)
    assert results["wer"] == pytest.approx(3 / 9)
    assert (results["substitutions"], results["deletions"], results["insertions"], results["hits"]) == (1, 1, 1, 7)
    assert results["num_reference_words"] == 9 and results["num_sentences"] == 3
    sentence_mean = (1 / 1 + 1 / 6 + 1 / 2) / 3
    assert abs(results["wer"] - sentence_mean) > 0.2


def test_wer_normalisation_is_explicit(wer):
    predictions, references = ["the cat sat"], ["The cat, sat."]
    assert wer.compute(predictions=predictions, references=references)["wer"] == 0.0
    # Each option on its own: "The" != "the" (case), "cat," != "cat" and "sat." != "sat" (punctuation).
    options = {(False, False): 3, (True, False): 2, (False, True): 1}
    for (lowercase, remove_punctuation), substitutions in options.items():
        results = wer.compute(
            predictions=predictions, references=references, lowercase=lowercase, remove_punctuation=remove_punctuation
        )
        assert results["substitutions"] == substitutions and results["wer"] == pytest.approx(substitutions / 3)


def test_wer_empty_prediction_and_empty_reference(wer):
    results = wer.compute(predictions=["", "extra words"], references=["two words", ""])
    assert (results["deletions"], results["insertions"], results["num_reference_words"]) == (2, 2, 2)
    assert results["wer"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="empty after normalisation"):
        wer.compute(predictions=["a"], references=["?!"])


# ---------------------------------------------------------------------------------------------------------- BLEU


def test_bleu_matches_sacrebleu_corpus_bleu_and_reports_signature(bleu):
    results = bleu.compute(predictions=PREDICTIONS, references=REFERENCES)
    direct = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    assert results["bleu"] == pytest.approx(direct.score, abs=1e-12)
    assert results["precisions"] == pytest.approx(direct.precisions)
    assert results["bp"] == pytest.approx(direct.bp)
    assert (results["sys_len"], results["ref_len"]) == (direct.sys_len, direct.ref_len)
    assert (results["counts"], results["totals"]) == (list(direct.counts), list(direct.totals))
    assert 0.0 < results["bleu"] < 100.0
    assert "nrefs:1" in results["signature"] and f"version:{sacrebleu.__version__}" in results["signature"]
    assert "tok:13a" in results["signature"] and "case:mixed" in results["signature"]
    lowercased = bleu.compute(predictions=PREDICTIONS, references=REFERENCES, lowercase=True)
    assert "case:lc" in lowercased["signature"]
    assert lowercased["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], lowercase=True).score)
    assert lowercased["bleu"] > results["bleu"]  # the uncased predictions now match capitalised reference words


def test_bleu_of_sentences_shorter_than_four_words_uses_the_effective_order(bleu):
    """Without a single 4-gram, plain BLEU-4 is 0 even for a perfect corpus; the module scores it over the orders
    the corpus has and says so in the signature. A corpus with every order keeps plain BLEU-4."""
    short = ["thank you", "see you soon", "hello"]
    perfect = bleu.compute(predictions=short, references=short)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["effective_order"]
    assert "eff:yes" in perfect["signature"]
    assert bleu.compute(predictions=short, references=short, effective_order=False)["bleu"] == 0.0
    partial = bleu.compute(predictions=["thank you", "see me soon", "hello"], references=short)
    direct = sacrebleu.corpus_bleu(["thank you", "see me soon", "hello"], [short], use_effective_order=True)
    assert partial["bleu"] == pytest.approx(direct.score) and 0 < partial["bleu"] < 100
    plain = bleu.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert not plain["effective_order"] and "eff:no" in plain["signature"]


def test_bleu_several_references_per_prediction(bleu):
    second = [reference.lower() for reference in REFERENCES]
    results = bleu.compute(predictions=PREDICTIONS, references=[list(pair) for pair in zip(REFERENCES, second)])
    direct = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, second])
    assert results["bleu"] == pytest.approx(direct.score, abs=1e-12)
    assert results["num_references"] == 2 and "nrefs:2" in results["signature"]
    with pytest.raises(ValueError, match="same number of references"):
        bleu.compute(predictions=["a b", "c d"], references=[["a b"], ["c d", "c e"]])


# --------------------------------------------------------------------------------------------------------- ROUGE


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_l_matches_rouge_score_sentence_mean(rouge, use_stemmer):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    scores = [scorer.score(reference, prediction)["rougeL"] for prediction, reference in zip(PREDICTIONS, REFERENCES)]
    results = rouge.compute(predictions=PREDICTIONS, references=REFERENCES, use_stemmer=use_stemmer)
    assert results["rougeL"] == pytest.approx(sum(s.fmeasure for s in scores) / len(scores), abs=1e-12)
    assert results["rougeL_precision"] == pytest.approx(sum(s.precision for s in scores) / len(scores), abs=1e-12)
    assert results["rougeL_recall"] == pytest.approx(sum(s.recall for s in scores) / len(scores), abs=1e-12)
    if use_stemmer:  # rouge_score would silently skip stemming with a custom tokenizer
        with pytest.raises(ValueError, match="stems only with its default tokenizer"):
            rouge.compute(predictions=PREDICTIONS, references=REFERENCES, use_stemmer=True, tokenizer="unicode")
    else:  # ASCII text, underscores included: the unicode tokenizer agrees with rouge_score's
        predictions, references = [*PREDICTIONS, "snake_case words"], [*REFERENCES, "snake case_words"]
        default = rouge.compute(predictions=predictions, references=references)
        unicode = rouge.compute(predictions=predictions, references=references, tokenizer="unicode")
        assert unicode["rougeL"] == pytest.approx(default["rougeL"], abs=1e-12)


def test_rouge_unicode_tokenizer_keeps_non_ascii_letters(rouge):
    # rouge_score's default tokenizer drops "ü", so "über" and "ber" look identical to it.
    assert rouge.compute(predictions=["über"], references=["ber"])["rougeL"] == 1.0
    assert rouge.compute(predictions=["über"], references=["ber"], tokenizer="unicode")["rougeL"] == 0.0
    assert rouge.compute(predictions=["Grüße!"], references=["grüße"], tokenizer="unicode")["rougeL"] == 1.0


# ------------------------------------------------------------------------------------------- shared behaviour


def test_perfect_predictions(wer, bleu, rouge):
    assert wer.compute(predictions=REFERENCES, references=REFERENCES)["wer"] == 0.0
    assert bleu.compute(predictions=REFERENCES, references=REFERENCES)["bleu"] == pytest.approx(100.0)
    assert rouge.compute(predictions=REFERENCES, references=REFERENCES)["rougeL"] == pytest.approx(1.0)
    report = generation_report(REFERENCES, REFERENCES)["metrics"]
    assert (report["WER"], report["BLEU-4"], report["ROUGE-L"]) == (0.0, pytest.approx(100.0), pytest.approx(100.0))


@pytest.mark.parametrize("name", ["wer", "bleu", "rouge"])
def test_bad_inputs_raise_clear_errors(name, wer, bleu, rouge):
    metric = {"wer": wer, "bleu": bleu, "rouge": rouge}[name]
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        metric.compute(predictions=["a", "b"], references=["a", "b", "c"])
    with pytest.raises(ValueError, match="empty"):
        metric.compute(predictions=[], references=[])
    with pytest.raises(TypeError, match=r"predictions\[1\].*int"):
        metric.compute(predictions=["a", 7], references=["a", "b"])
    with pytest.raises(TypeError, match=r"references\[0\]"):
        metric.compute(predictions=["a"], references=[None])
    with pytest.raises(TypeError, match="single string"):
        metric.compute(predictions="a b", references=["a b"])


# ---------------------------------------------------------------------------------------------- distributed use


def _shards(values, num_processes=2):
    """Rank r gets items r, r + 2, ...: what an unshuffled `DistributedSampler` hands out."""
    return [values[rank::num_processes] for rank in range(num_processes)]


def test_gathered_shards_give_single_process_numbers():
    """The documented path: each rank generates its shard, gather_object concatenates in rank order, compute once."""
    single = generation_report(PREDICTIONS, REFERENCES)
    prediction_shards, reference_shards = _shards(PREDICTIONS), _shards(REFERENCES)
    gathered_predictions = [text for shard in prediction_shards for text in shard]  # what gather_object returns
    gathered_references = [text for shard in reference_shards for text in shard]
    assert gathered_predictions != PREDICTIONS  # a different sentence order: the corpus metrics do not care
    merged = generation_report(gathered_predictions, gathered_references)
    assert merged["metrics"] == single["metrics"]
    assert merged["bleu_signature"] == single["bleu_signature"]
    # The pitfall this avoids: averaging per-process corpus scores does not give the corpus score.
    per_rank = [generation_report(p, r)["metrics"] for p, r in zip(prediction_shards, reference_shards)]
    for key in ("BLEU-4", "WER"):
        assert sum(m[key] for m in per_rank) / 2 != pytest.approx(single["metrics"][key], abs=0.1)


def test_sufficient_statistics_of_shards_add_up_exactly(wer, bleu):
    full_wer = wer.compute(predictions=PREDICTIONS, references=REFERENCES)
    full_bleu = bleu.compute(predictions=PREDICTIONS, references=REFERENCES)
    shard_wer = [wer.compute(predictions=p, references=r) for p, r in zip(_shards(PREDICTIONS), _shards(REFERENCES))]
    shard_bleu = [bleu.compute(predictions=p, references=r) for p, r in zip(_shards(PREDICTIONS), _shards(REFERENCES))]
    errors = sum(s["substitutions"] + s["deletions"] + s["insertions"] for s in shard_wer)
    assert errors / sum(s["num_reference_words"] for s in shard_wer) == full_wer["wer"]
    correct = [sum(s["counts"][n] for s in shard_bleu) for n in range(4)]
    total = [sum(s["totals"][n] for s in shard_bleu) for n in range(4)]
    sys_len, ref_len = sum(s["sys_len"] for s in shard_bleu), sum(s["ref_len"] for s in shard_bleu)
    merged = sacrebleu.metrics.BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp")
    assert merged.score == full_bleu["bleu"]


@pytest.mark.parametrize("name", ["wer", "bleu"])
def test_evaluate_distributed_add_batch_scores_the_full_corpus(name, tmp_path):
    """evaluate's own multi-process mode: every rank add_batch()es its shard, rank 0 computes on all rows."""
    results, errors = {}, []

    def rank_main(rank):
        try:
            metric = evaluate.load(
                str(METRICS_DIR / name), num_process=2, process_id=rank, experiment_id=f"test_{name}", cache_dir=str(tmp_path)
            )
            metric.add_batch(predictions=PREDICTIONS[rank::2], references=REFERENCES[rank::2])
            results[rank] = metric.compute()
        except Exception as error:  # noqa: BLE001 -- surfaced below, a thread cannot fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert results[1] is None  # only rank 0 gets the result
    single = _load(name).compute(predictions=PREDICTIONS, references=REFERENCES)
    assert results[0] == single


# --------------------------------------------------------------------------------------------- generation_report


def test_generation_report_contents():
    report = generation_report(PREDICTIONS, REFERENCES)
    metrics = report["metrics"]
    direct_wer = jiwer.wer(
        [r.lower() for r in REFERENCES],
        PREDICTIONS,
        reference_transform=jiwer.Compose(
            [jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]
        ),
    )
    assert metrics["WER"] == pytest.approx(100 * direct_wer)
    assert metrics["BLEU-4"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], lowercase=True).score)
    assert 0 < metrics["ROUGE-L"] < 100 and metrics["num_sentences"] == len(PREDICTIONS)
    assert report["bleu_signature"].startswith("nrefs:1|case:lc|") and "tok:13a" in report["bleu_signature"]
    assert report["bleu_signature"] in report["table"]
    assert report["table"].startswith("| BLEU-4 | ROUGE-L | WER |")
    assert f"{metrics['BLEU-4']:.2f}" in report["table"] and f"{metrics['WER']:.2f}" in report["table"]


def test_paired_difference_calls_a_win_only_when_its_bootstrap_interval_excludes_zero():
    rng = np.random.default_rng(0)
    base = rng.normal(100.0, 30.0, size=500)
    clear_win = paired_difference(base + 5.0 + rng.normal(0.0, 1.0, 500), base)
    assert clear_win.verdict == "beats" and 0 < clear_win.low < clear_win.mean < clear_win.high
    assert clear_win.mean == pytest.approx(5.0, abs=0.2)
    noise = rng.normal(0.0, 5.0, 500)
    tie = paired_difference(base + noise - noise.mean(), base)  # mean difference exactly 0
    assert tie.verdict == "is not distinguishable from" and tie.low < 0 < tie.high
    assert paired_difference(base - 5.0, base).verdict == "does worse than"
    same = paired_difference(base, base)  # a collapsed comparison: no spread, no win
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0) and same.verdict == "is not distinguishable from"
    # The interval comes from resampling the pairs: resampling each side alone would be far wider here.
    assert tie.high - tie.low < 0.25 * 2 * 1.96 * base.std() * np.sqrt(2 / 500)
    # A consistent but invisible gain (a few items better by 1e-4) is not called a win at a resolution of 0.1.
    tiny = np.zeros(12)
    tiny[:4] = 1e-4
    assert paired_difference(tiny, np.zeros(12)).verdict == "beats"
    assert paired_difference(tiny, np.zeros(12), resolution=0.1).verdict == "is not distinguishable from"
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1.0, 2.0], [1.0])
