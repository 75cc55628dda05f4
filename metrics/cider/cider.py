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
"""CIDEr-D, the COCO captioning metric, computed as pycocoevalcap's `Cider` scorer computes it."""

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
CIDEr-D (Vedantam et al., 2015) as implemented by the COCO caption evaluation code (`pycocoevalcap.cider.Cider`,
which is CIDEr-D although it is named CIDEr): every caption becomes TF-IDF vectors of its 1- to 4-grams, with
document frequencies counted over the reference sets of the WHOLE corpus (an n-gram counts once per image); a
prediction scores the mean over n of the cosine similarity with each reference, with the prediction's weights clipped
at the reference's (the "-D": repeating an n-gram does not pay) and a Gaussian penalty on the difference in length
(sigma 6; lengths are counted in bigrams, as pycocoevalcap does), averaged over references and multiplied by 10.
Tested against pycocoevalcap to 1e-6.

Because the IDF comes from the corpus, CIDEr is a corpus metric: score all predictions in one call (in distributed
evaluation, gather them first); scores of two halves do not average to the score of the whole.

Tokenisation (`tokenize`):
- `"lower_punct"` (default): lower-case, turn every character that is neither a letter, a digit nor whitespace into
  a space, split on whitespace. pycocoevalcap tokenises with the Stanford PTB tokenizer, which needs Java; on plain
  captions the two agree (lower-cased words, punctuation dropped), but PTB splits contractions ("don't" -> "do n't")
  and keeps hyphenated words whole ("t-shirt"), where this gives "don t" and "t shirt".
- `"none"`: split on whitespace only, for text tokenised beforehand (e.g. by the PTB tokenizer).

Reported `cider` is 100 × pycocoevalcap's score, the scale papers use (COCO CIDEr "120" is 1.20 in pycocoevalcap).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`, or `list` of `str`): the reference captions of each image (any number,
        at least one each).
    tokenize (`str`, defaults to `"lower_punct"`): `"lower_punct"` or `"none"`, see the description.
    n (`int`, defaults to 4): longest n-gram.
    sigma (`float`, defaults to 6.0): width of the length penalty.

Returns:
    `cider` (`float`): corpus CIDEr-D × 100 (the mean of `scores`); `scores` (`list` of `float`): per-prediction
    CIDEr-D × 100; `num_predictions` (`int`).

Examples:
    >>> cider = evaluate.load("metrics/cider")
    >>> results = cider.compute(
    ...     predictions=["a red circle in the centre", "a blue star"],
    ...     references=[["a red circle in the middle", "a red disc in the centre"], ["a big blue star", "a blue star"]],
    ... )
    >>> round(results["cider"], 2)  # two images only: the IDF is log(2), which inflates the scale
    554.66
"""

_CITATION = """
@inproceedings{vedantam2015cider,
  title = {CIDEr: Consensus-based Image Description Evaluation},
  author = {Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle = {CVPR},
  year = {2015},
}
"""

_NOT_WORD = re.compile(r"[^\w\s]|_")
TOKENIZERS = ("lower_punct", "none")


def tokenize_caption(text: str, tokenize: str = "lower_punct") -> list[str]:
    """Words of a caption: see `_DESCRIPTION` for the two modes."""
    if tokenize == "lower_punct":
        return _NOT_WORD.sub(" ", text.lower()).split()
    if tokenize == "none":
        return text.split()
    raise ValueError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}.")


def _ngram_counts(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _reference_lists(predictions, references) -> list[list[str]]:
    if predictions is None or references is None:
        raise ValueError("`predictions` and `references` are both required.")
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("`predictions` and `references` must be lists (one entry per image), not a single string.")
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} reference sets; pass one per prediction."
        )
    if len(predictions) == 0:
        raise ValueError("No captions to evaluate: `predictions` and `references` are empty.")
    per_prediction = []
    for position, (prediction, entry) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise TypeError(f"`predictions[{position}]` is a {type(prediction).__name__}; decode ids to text first.")
        refs = [entry] if isinstance(entry, str) else entry
        if not isinstance(refs, (list, tuple)) or len(refs) == 0 or not all(isinstance(ref, str) for ref in refs):
            raise TypeError(f"`references[{position}]` must be a string or a non-empty list of strings, got {entry!r}.")
        per_prediction.append(list(refs))
    return per_prediction


def corpus_cider(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]] | Sequence[str],
    tokenize: str = "lower_punct",
    n: int = 4,
    sigma: float = 6.0,
) -> dict[str, Any]:
    """CIDEr-D of `predictions` against their `references`; see `_DESCRIPTION`."""
    per_prediction = _reference_lists(predictions, references)
    hypotheses = [_ngram_counts(tokenize_caption(text, tokenize), n) for text in predictions]
    reference_counts = [[_ngram_counts(tokenize_caption(ref, tokenize), n) for ref in refs] for refs in per_prediction]
    document_frequency = Counter(gram for refs in reference_counts for gram in set().union(*refs))
    log_num_images = np.log(float(len(per_prediction)))

    def tf_idf(counts: Counter) -> tuple[list[dict], list[float], int]:
        vectors, squared_norms, length = [{} for _ in range(n)], [0.0] * n, 0
        for gram, term_frequency in counts.items():
            order = len(gram) - 1
            weight = float(term_frequency) * (log_num_images - np.log(max(1.0, document_frequency[gram])))
            vectors[order][gram] = weight
            squared_norms[order] += weight**2
            length += term_frequency if order == 1 else 0  # pycocoevalcap measures length in bigrams
        return vectors, [np.sqrt(value) for value in squared_norms], length

    scores = []
    for hypothesis, refs in zip(hypotheses, reference_counts):
        hyp_vectors, hyp_norms, hyp_length = tf_idf(hypothesis)
        total = np.zeros(n)
        for ref in refs:
            ref_vectors, ref_norms, ref_length = tf_idf(ref)
            penalty = np.e ** (-(float(hyp_length - ref_length) ** 2) / (2 * sigma**2))
            for order in range(n):
                value = sum(
                    min(weight, ref_vectors[order].get(gram, 0.0)) * ref_vectors[order].get(gram, 0.0)
                    for gram, weight in hyp_vectors[order].items()
                )
                if hyp_norms[order] != 0 and ref_norms[order] != 0:
                    value /= hyp_norms[order] * ref_norms[order]
                total[order] += value * penalty
        scores.append(100.0 * 10.0 * float(np.mean(total)) / len(refs))
    return {"cider": float(np.mean(scores)), "scores": scores, "num_predictions": len(scores)}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CIDEr(evaluate.Metric):
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
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1411.5726"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add predictions and their references (validated first: strings only, one reference set per prediction)."""
        _reference_lists(predictions, references)
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, tokenize: str = "lower_punct", n: int = 4, sigma: float = 6.0):
        return corpus_cider(predictions, references, tokenize=tokenize, n=n, sigma=sigma)
