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
"""Corpus word error rate (WER) with jiwer: total edit operations over total reference words."""

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import jiwer

_DESCRIPTION = """
Corpus-level word error rate, computed with jiwer:

    WER = (S + D + I) / N

where S, D, I are the substitutions, deletions and insertions of the word-level Levenshtein alignment summed over
ALL sentences, and N is the total number of reference words (N = S + D + hits). This is the standard corpus WER; it
is NOT the mean of per-sentence WERs (which over-weights short sentences). Because S, D, I and hits are additive,
shards of a corpus can be scored separately and merged exactly: WER = sum(S + D + I) / sum(S + D + hits).

Normalisation is applied identically to predictions and references before alignment, and is explicit:
- `lowercase=True` (default): lower-case both sides. The project's text tokenizer (DistilBERT, uncased) can only
  produce lower-case text, so a cased comparison would count every capital letter in a reference as an error.
- `remove_punctuation=True` (default): delete every Unicode punctuation character (jiwer.RemovePunctuation;
  note "don't" -> "dont", "well-known" -> "wellknown").
- Always: collapse repeated whitespace, strip, split on whitespace.

An empty reference (after normalisation) is allowed: its predicted words count as insertions. The corpus must hold
at least one reference word, otherwise WER is undefined and a ValueError is raised.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated sentences.
    references (`list` of `str`): one reference sentence per prediction.
    lowercase (`bool`, defaults to `True`): lower-case both sides before alignment.
    remove_punctuation (`bool`, defaults to `True`): remove Unicode punctuation from both sides before alignment.

Returns:
    `wer` (`float`): corpus WER as a fraction (0.25 = 25 %; can exceed 1 with many insertions);
    `substitutions`, `deletions`, `insertions`, `hits` (`int`): corpus totals of the alignment;
    `num_reference_words` (`int`): N = substitutions + deletions + hits; `num_sentences` (`int`).

Examples:
    >>> wer = evaluate.load("metrics/wer")
    >>> results = wer.compute(predictions=["the cat sat", "hello"], references=["The cat sat down.", "Hello!"])
    >>> results["wer"], results["deletions"], results["num_reference_words"]
    (0.2, 1, 5)
"""

_CITATION = """
@misc{jiwer,
  title={JiWER: Similarity measures for automatic speech recognition evaluation},
  author={Vaessen, Nik},
  howpublished={\\url{https://github.com/jitsi/jiwer}}
}
"""


def _check_text_inputs(predictions, references) -> None:
    """Clear errors for the mistakes evaluate would otherwise turn into silent casts or obscure arrow errors."""
    for name, values in (("predictions", predictions), ("references", references)):
        if values is None:
            raise ValueError(f"`{name}` is required.")
        if isinstance(values, str):
            raise TypeError(f"`{name}` must be a list of strings, got a single string; wrap it in a list.")
        for position, value in enumerate(values):
            if not isinstance(value, str):
                raise TypeError(
                    f"`{name}[{position}]` must be a string, got {type(value).__name__} ({value!r}); "
                    "decode token ids to text before scoring."
                )
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} references; WER needs exactly one reference "
            "per prediction."
        )


def _normaliser(lowercase: bool, remove_punctuation: bool) -> jiwer.Compose:
    steps = ([jiwer.ToLowerCase()] if lowercase else []) + ([jiwer.RemovePunctuation()] if remove_punctuation else [])
    return jiwer.Compose(steps + [jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])


def corpus_wer(
    predictions: Sequence[str], references: Sequence[str], lowercase: bool = True, remove_punctuation: bool = True
) -> dict[str, Any]:
    """Corpus WER and its additive alignment counts; see `_DESCRIPTION`."""
    _check_text_inputs(predictions, references)
    if len(predictions) == 0:
        raise ValueError("No sentences to evaluate: `predictions` and `references` are empty.")
    normalise = _normaliser(lowercase, remove_punctuation)
    output = jiwer.process_words(
        list(references), list(predictions), reference_transform=normalise, hypothesis_transform=normalise
    )
    num_reference_words = output.substitutions + output.deletions + output.hits
    if num_reference_words == 0:
        raise ValueError(
            "All references are empty after normalisation, so WER (errors / reference words) is undefined."
        )
    errors = output.substitutions + output.deletions + output.insertions
    return {
        "wer": errors / num_reference_words,
        "substitutions": int(output.substitutions),
        "deletions": int(output.deletions),
        "insertions": int(output.insertions),
        "hits": int(output.hits),
        "num_reference_words": int(num_reference_words),
        "num_sentences": len(predictions),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WER(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/jitsi/jiwer"],
            reference_urls=["https://en.wikipedia.org/wiki/Word_error_rate"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references (validated first: strings only, equal lengths)."""
        _check_text_inputs(predictions, references)
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one prediction and its reference (validated first: strings only)."""
        _check_text_inputs([prediction], [reference])
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, lowercase: bool = True, remove_punctuation: bool = True):
        return corpus_wer(predictions, references, lowercase=lowercase, remove_punctuation=remove_punctuation)
