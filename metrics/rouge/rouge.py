# Copyright 2025 The HF Multimodal Models Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Sentence-averaged ROUGE-L (longest common subsequence) with Google's rouge_score."""

import re
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """
ROUGE-L computed with `rouge_score.rouge_scorer.RougeScorer(["rougeL"])`: for each sentence, precision = LCS /
prediction length, recall = LCS / reference length, F = harmonic mean (beta = 1). The reported value is the MEAN
over sentences (the usual ROUGE-L protocol, and what sign-language translation papers report). Unlike BLEU/WER this
is a mean of per-sentence scores, so shards can be merged by summing per-sentence scores and counts.

Tokenisation (`tokenizer`):
- `"default"`: rouge_score's own tokenizer: lower-cases and replaces every character outside [a-z0-9] by a space.
  Standard for English; it BREAKS non-ASCII words ("über" -> "ber", "straße" -> "stra e"), so do not use it for
  German (PHOENIX-2014T) or other non-English text.
- `"unicode"`: lower-cases, replaces every character that is neither a Unicode letter/digit nor whitespace by a
  space, and splits on whitespace. Identical to `"default"` on plain ASCII text.

`use_stemmer=True` applies rouge_score's Porter stemmer (English only, default tokenizer only; default `False`).
With several references per prediction, each sentence takes the reference with the best F-measure
(`RougeScorer.score_multi`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated sentences.
    references (`list` of `str`, or `list` of `list` of `str`): reference(s) for each prediction.
    use_stemmer (`bool`, defaults to `False`): Porter-stem tokens (English).
    tokenizer (`str`, defaults to `"default"`): `"default"` (rouge_score, ASCII only) or `"unicode"`.

Returns:
    `rougeL` (`float`, 0-1): mean per-sentence ROUGE-L F-measure; `rougeL_precision`, `rougeL_recall` (`float`,
    0-1): mean per-sentence precision and recall; `num_sentences` (`int`).

Examples:
    >>> rouge = evaluate.load("metrics/rouge")
    >>> results = rouge.compute(predictions=["the cat sat"], references=["the cat sat down"])
    >>> round(results["rougeL"], 4), results["rougeL_precision"], results["rougeL_recall"]
    (0.8571, 1.0, 0.75)
"""

_CITATION = """
@inproceedings{lin-2004-rouge,
  title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
  author = "Lin, Chin-Yew",
  booktitle = "Text Summarization Branches Out",
  year = "2004",
  publisher = "Association for Computational Linguistics",
  pages = "74--81",
}
"""

_NON_WORD = re.compile(r"[^\w\s]|_")


class UnicodeTokenizer:
    """Lower-case, turn non-word characters into spaces, split on whitespace (keeps "über", "straße")."""

    def tokenize(self, text: str) -> list[str]:
        return _NON_WORD.sub(" ", text.lower()).split()


def _check_predictions(predictions) -> None:
    if predictions is None:
        raise ValueError("`predictions` is required.")
    if isinstance(predictions, str):
        raise TypeError("`predictions` must be a list of strings, got a single string; wrap it in a list.")
    for position, value in enumerate(predictions):
        if not isinstance(value, str):
            raise TypeError(
                f"`predictions[{position}]` must be a string, got {type(value).__name__} ({value!r}); "
                "decode token ids to text before scoring."
            )


def _reference_lists(references, num_predictions: int) -> list[list[str]]:
    if references is None:
        raise ValueError("`references` is required.")
    if isinstance(references, str):
        raise TypeError("`references` must be a list (one entry per prediction), got a single string.")
    if len(references) != num_predictions:
        raise ValueError(
            f"Got {num_predictions} predictions but {len(references)} references; pass one reference (or one list "
            "of references) per prediction."
        )
    per_prediction = []
    for position, entry in enumerate(references):
        refs = [entry] if isinstance(entry, str) else entry
        if not isinstance(refs, (list, tuple)) or len(refs) == 0:
            raise TypeError(f"`references[{position}]` must be a string or a non-empty list of strings, got {entry!r}.")
        for value in refs:
            if not isinstance(value, str):
                raise TypeError(
                    f"`references[{position}]` contains {type(value).__name__} ({value!r}); references must be strings."
                )
        per_prediction.append(list(refs))
    return per_prediction


def sentence_rouge_l(
    predictions: Sequence[str], references, use_stemmer: bool = False, tokenizer: str = "default"
) -> dict[str, Any]:
    """Mean per-sentence ROUGE-L precision / recall / F-measure; see `_DESCRIPTION`."""
    _check_predictions(predictions)
    per_prediction = _reference_lists(references, len(predictions))
    if len(predictions) == 0:
        raise ValueError("No sentences to evaluate: `predictions` and `references` are empty.")
    if tokenizer not in ("default", "unicode"):
        raise ValueError(f'`tokenizer` must be "default" or "unicode", got {tokenizer!r}.')
    if use_stemmer and tokenizer == "unicode":
        raise ValueError('rouge_score stems only with its default tokenizer; pass use_stemmer=False or tokenizer="default".')
    scorer = rouge_scorer.RougeScorer(
        ["rougeL"], use_stemmer=use_stemmer, tokenizer=UnicodeTokenizer() if tokenizer == "unicode" else None
    )
    precision = recall = fmeasure = 0.0
    for prediction, refs in zip(predictions, per_prediction):
        # rouge_score takes (target, prediction): the order matters for precision vs recall.
        score = scorer.score(refs[0], prediction) if len(refs) == 1 else scorer.score_multi(refs, prediction)
        precision += score["rougeL"].precision
        recall += score["rougeL"].recall
        fmeasure += score["rougeL"].fmeasure
    count = len(predictions)
    return {
        "rougeL": fmeasure / count,
        "rougeL_precision": precision / count,
        "rougeL_recall": recall / count,
        "num_sentences": count,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://aclanthology.org/W04-1013/"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (validated first: strings only, one entry per prediction)."""
        _check_predictions(predictions)
        _reference_lists(references, len(predictions))
        if len(predictions) == 0:
            raise ValueError("No sentences to evaluate: `predictions` and `references` are empty.")
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one prediction and its reference(s) (validated first: strings only)."""
        _check_predictions([prediction])
        _reference_lists([reference], 1)
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, use_stemmer: bool = False, tokenizer: str = "default"):
        return sentence_rouge_l(predictions, references, use_stemmer=use_stemmer, tokenizer=tokenizer)
