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
"""Corpus BLEU-4 with sacrebleu, returned together with sacrebleu's signature string."""

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import sacrebleu
from sacrebleu.metrics import BLEU as SacreBLEU

_DESCRIPTION = """
Corpus BLEU-4 computed by sacrebleu (`sacrebleu.metrics.BLEU(...).corpus_score`), i.e. n-gram matches and totals
(n = 1..4) and hypothesis/reference lengths are summed over the WHOLE corpus before the geometric mean and brevity
penalty are taken. It is never an average of sentence or per-process BLEU scores: in distributed evaluation, gather
all predictions (or add the additive `counts`, `totals`, `sys_len`, `ref_len`) before computing.

Defaults are sacrebleu's: case-sensitive (`lowercase=False`), `tokenize="13a"` (the WMT standard), exponential
smoothing (`smooth_method="exp"`, which only matters when some n-gram order has no match). Every setting that
changes the number is recorded in the returned `signature`, e.g. `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|
version:2.6.0`: report it with the score, otherwise BLEU numbers are not comparable. If the model's tokenizer is
uncased (e.g. DistilBERT uncased) and references are cased, pass `lowercase=True` (signature then shows `case:lc`).

Short sentences: BLEU-4 multiplies four n-gram precisions, so a corpus without a single 4-gram (every sentence
shorter than 4 words) scores 0 however good it is. By default (`effective_order=None`) such a corpus is scored with
sacrebleu's effective order instead: the geometric mean runs over the n-gram orders the corpus has (`eff:yes` in the
signature, `effective_order: True` in the result). Any corpus with n-grams of every order gets plain BLEU-4.

References: one string per prediction, or a list of strings per prediction (several references; every prediction
must have the same number of them).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated sentences (detokenised text).
    references (`list` of `str`, or `list` of `list` of `str`): one reference per prediction, or the same number
        of references for every prediction.
    lowercase (`bool`, defaults to `False`): case-insensitive BLEU.
    tokenize (`str`, defaults to `None` = "13a"): sacrebleu tokenizer ("13a", "intl", "char", "zh", "none", ...).
    smooth_method (`str`, defaults to `"exp"`): "exp", "floor", "add-k" or "none".
    smooth_value (`float`, optional): value for "floor" / "add-k" smoothing.
    effective_order (`bool`, optional): average only over the n-gram orders the predictions contain. `None`
        (default): only when some order up to 4 has no n-gram at all, where plain BLEU-4 would be 0 by construction.

Returns:
    `bleu` (`float`, 0-100): corpus BLEU-4; `precisions` (`list` of 4 `float`, 0-100): modified n-gram precisions;
    `bp` (`float`): brevity penalty; `sys_len`, `ref_len` (`int`): hypothesis / effective reference lengths in
    tokens; `ratio` (`float`): sys_len / ref_len; `counts`, `totals` (`list` of 4 `int`): n-gram matches and
    n-gram totals (the additive sufficient statistics); `signature` (`str`): sacrebleu's signature;
    `num_sentences` (`int`); `num_references` (`int`, per prediction); `effective_order` (`bool`): whether the
    effective order was used.

Examples:
    >>> bleu = evaluate.load("metrics/bleu")
    >>> results = bleu.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
    >>> results["bleu"], results["signature"]
    (100.00000000000004, 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0')
"""

_CITATION = """
@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores",
  author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
  year = "2018",
  publisher = "Association for Computational Linguistics",
  pages = "186--191",
}
"""

References = Sequence[str] | Sequence[Sequence[str]]


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
    """Validate references and return them as one list of references per prediction."""
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
            raise TypeError(
                f"`references[{position}]` must be a string or a non-empty list of strings, got {entry!r}."
            )
        for value in refs:
            if not isinstance(value, str):
                raise TypeError(
                    f"`references[{position}]` contains {type(value).__name__} ({value!r}); references must be strings."
                )
        per_prediction.append(list(refs))
    counts = {len(refs) for refs in per_prediction}
    if len(counts) > 1:
        raise ValueError(
            f"Every prediction must have the same number of references, got between {min(counts)} and {max(counts)}."
        )
    return per_prediction


def corpus_bleu(
    predictions: Sequence[str],
    references: References,
    lowercase: bool = False,
    tokenize: str | None = None,
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool | None = None,
) -> dict[str, Any]:
    """sacrebleu corpus BLEU-4 with its statistics and signature; see `_DESCRIPTION`."""
    _check_predictions(predictions)
    per_prediction = _reference_lists(references, len(predictions))
    if len(predictions) == 0:
        raise ValueError("No sentences to evaluate: `predictions` and `references` are empty.")
    num_references = len(per_prediction[0])
    reference_streams = [[refs[i] for refs in per_prediction] for i in range(num_references)]
    def scorer_with(effective: bool) -> SacreBLEU:
        return SacreBLEU(
            lowercase=lowercase,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            max_ngram_order=4,
            effective_order=effective,
        )

    scorer = scorer_with(bool(effective_order))
    score = scorer.corpus_score(list(predictions), reference_streams)
    if effective_order is None and not all(score.totals):
        scorer = scorer_with(True)
        score = scorer.corpus_score(list(predictions), reference_streams)
    return {
        "bleu": float(score.score),
        "precisions": [float(p) for p in score.precisions],
        "bp": float(score.bp),
        "sys_len": int(score.sys_len),
        "ref_len": int(score.ref_len),
        "ratio": score.sys_len / score.ref_len if score.ref_len else 0.0,
        "counts": [int(c) for c in score.counts],
        "totals": [int(t) for t in score.totals],
        "signature": str(scorer.get_signature()),
        "num_sentences": len(predictions),
        "num_references": num_references,
        "effective_order": scorer.effective_order,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BLEU(evaluate.Metric):
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
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W18-6319/", f"sacrebleu {sacrebleu.__version__}"],
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

    def _compute(
        self,
        predictions,
        references,
        lowercase: bool = False,
        tokenize: str | None = None,
        smooth_method: str = "exp",
        smooth_value: float | None = None,
        effective_order: bool | None = None,
    ):
        return corpus_bleu(
            predictions,
            references,
            lowercase=lowercase,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            effective_order=effective_order,
        )
