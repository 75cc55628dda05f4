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
"""Cross-modal retrieval metric (image<->text Recall@K, median/mean rank, positive/negative similarity)."""

from typing import Any, Dict, Sequence, Union

import datasets
import evaluate
import numpy as np
import torch


_DESCRIPTION = """
Cross-modal retrieval between visual items ("images": images or video clips) and texts, following the COCO /
Flickr30k protocol where one image may own several texts (e.g. 5 captions). Embeddings are L2-normalised, so
scores are cosine similarities.

- text->image (t2i): each text has exactly one true image.
- image->text (i2t): an image is found at the position of the first of its texts, so R@K counts an image as a hit
  if any of its texts is in the top K.

Ties are ordered at random, in expectation. For a query, let s be the number of wrong candidates scoring strictly
above its best true candidate, t the wrong candidates tied with it and q the true candidates tied with it (q = 1
for t2i). R@K is the exact probability that a random order of the tie puts a true candidate in the top K:
1 - C(t, m) / C(t + q, m) with m = K - s (0 if m <= 0), and the rank used by MedR and MeanR is the expected one,
s + 1 + t / (q + 1). So identical embeddings score exactly chance (R@1 = 1 / number of images for t2i), not 100 %.
Scores within `tie_tolerance` (default 1e-6) of the best true score are tied. Even identical rows get float64
scores that differ in the last bits, depending on where the matrix product puts them, and float32 embeddings (the
module's input features are float32) round every coordinate by up to 6e-8 relative, which moves a cosine by up to
about 1.2e-7: two scores equal in exact arithmetic can differ by 2.4e-7. 1e-6 covers that with margin and is far
below any difference a float32 encoder reproduces. Raise it for half-precision embeddings (e.g. 2e-2 for
bfloat16); 0 ties only bit-equal scores. Zero, NaN or infinite embeddings are refused.

Scores are computed `chunk_size` texts at a time, each chunk against every image, once for both directions: the score
block is chunk_size x num_images (by default about 2**24 scores, 128 MiB) rather than num_texts x num_images, and the
float32 embeddings are never copied whole to float64.

Array path: `compute(text_embeddings=...)` stores every embedding in Arrow as a list of floats and reads it back (that
is what lets `add_batch` stream and gather across processes), which at 10k texts costs as much again as the metric.
When the embeddings are already arrays in one process, `compute_arrays(text_embeddings, image_index,
image_embeddings, ...)` takes the same arguments, returns the same results, and skips the Arrow round trip.
"""

_KWARGS_DESCRIPTION = """
Args:
    text_embeddings (`list` of `list` of `float`): one embedding per text, shape (num_texts, dim).
    image_index (`list` of `int`): for each text, the row of its true image in `image_embeddings`.
    image_embeddings (`np.ndarray`, `torch.Tensor` or nested `list`): shape (num_images, dim). Every image must own
        at least one text.
    ks (`Sequence[int]`, defaults to `(1, 5, 10)`): cut-offs for Recall@K.
    chunk_size (`int`, *optional*): texts scored at once against every image. By default as many as keep the float64
        score block near 128 MiB (`2**24 // num_images` texts), so memory stays flat however many images there are.
    tie_tolerance (`float`, defaults to 1e-6): cosine scores closer than this to a query's best true score count as
        tied with it.

Returns:
    `i2t_R@K`, `t2i_R@K` (percent, 0-100, expected over random orders of ties) for each K; `i2t_MedR`, `t2i_MedR`
    (median of the expected ranks, rounded down as in the VSE++ / Karpathy-split evaluation); `i2t_MeanR`,
    `t2i_MeanR`; `pos_sim` (mean cosine of the true pairs); `neg_sim` (mean cosine of all non-matching pairs, NaN
    when there is a single image); `num_images`, `num_texts`.

Examples:
    >>> retrieval = evaluate.load("metrics/retrieval")
    >>> images = np.eye(2, dtype=np.float32)
    >>> results = retrieval.compute(
    ...     text_embeddings=[[1.0, 0.1], [0.1, 1.0]], image_index=[0, 1], image_embeddings=images, ks=[1]
    ... )
    >>> results["t2i_R@1"], results["i2t_MedR"]
    (100.0, 1.0)
"""

_CITATION = """
@inproceedings{faghri2018vse++,
  title={VSE++: Improving Visual-Semantic Embeddings with Hard Negatives},
  author={Faghri, Fartash and Fleet, David J and Kiros, Jamie Ryan and Fidler, Sanja},
  booktitle={BMVC},
  year={2018}
}
"""

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Sequence[float]]]


DEFAULT_TIE_TOLERANCE = 1e-6
SCORE_BLOCK_ELEMENTS = 2**24  # float64 scores per chunk by default: 128 MiB, plus two boolean masks of 16 MiB


def _as_matrix(values: ArrayLike, name: str) -> torch.Tensor:
    """A 2-D float32/float64 CPU tensor over the caller's data (no copy when it already is one): the embeddings are
    normalised a chunk at a time, so 100k float32 rows never exist a second time as float64."""
    if isinstance(values, torch.Tensor):
        matrix = values.detach().to("cpu")
    else:
        try:
            array = np.asarray(values)
            matrix = torch.from_numpy(array if array.dtype in (np.float32, np.float64) else array.astype(np.float64))
        except (ValueError, TypeError) as error:
            raise ValueError(f"`{name}` must be a rectangular array of numbers: {error}") from None
    if matrix.dtype not in (torch.float32, torch.float64):
        matrix = matrix.double()
    if matrix.ndim != 2:
        raise ValueError(f"`{name}` must have shape (num_items, dim), got shape {tuple(matrix.shape)}.")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(matrix.shape)}); pass at least one embedding.")
    return matrix


def _inverse_norms(matrix: torch.Tensor, name: str, chunk_size: int) -> torch.Tensor:
    """Float64 1 / L2 norm of every row, computed `chunk_size` rows at a time. Rows without a direction (zero, NaN,
    infinite) are refused, since every score they take part in would be a tie or undefined."""
    norms = torch.empty(matrix.shape[0], dtype=torch.float64)
    for start in range(0, matrix.shape[0], chunk_size):
        norms[start : start + chunk_size] = torch.linalg.vector_norm(matrix[start : start + chunk_size].double(), dim=1)
    not_finite = ~torch.isfinite(norms)
    if not_finite.any():
        raise ValueError(
            f"`{name}` row {int(not_finite.nonzero()[0])} contains NaN or infinite values ({int(not_finite.sum())} "
            "such rows); check the encoder outputs."
        )
    is_zero = norms == 0
    if is_zero.any():
        raise ValueError(
            f"`{name}` row {int(is_zero.nonzero()[0])} is all zeros ({int(is_zero.sum())} such rows): it has no "
            "direction, so every score it takes part in is a tie. Check the encoder outputs (a collapsed or "
            "untrained projection) or drop those rows."
        )
    return norms.reciprocal()


def _count_above_and_band(
    scores: torch.Tensor, best_true: torch.Tensor, tolerance: float, dim: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Along `dim` (1: per row, 0: per column): the count of candidates scoring above `best_true + tolerance`, the
    mask of candidates scoring at least `best_true - tolerance`, and how many scores of the whole chunk lie in the
    tolerance bands. Comparing is cheap and counting per row is not, so callers count the mask per row only when the
    bands hold more scores than their true candidates: ties between a wrong candidate and the best true score are
    rare outside degenerate embeddings."""
    best = best_true[:, None] if dim == 1 else best_true[None, :]
    above_mask = scores > best + tolerance
    above = above_mask.sum(dim=dim, dtype=torch.int32)  # int32 sums cost half the default int64 ones
    del above_mask
    at_least_mask = scores >= best - tolerance
    in_bands = int(torch.count_nonzero(at_least_mask)) - int(above.sum())
    return above, at_least_mask, in_bands


def _hit_probability(above: torch.Tensor, tied_wrong: torch.Tensor, tied_true: torch.Tensor, k: int) -> torch.Tensor:
    """P(a true candidate is in the top k) when the tie is in random order: 1 - C(t, m) / C(t + q, m), m = k - s."""
    m = k - above
    needs_ratio = (m > 0) & (m <= tied_wrong)  # otherwise the hit is impossible (m <= 0) or certain (m > t)
    # C(t, m) / C(t + q, m) = prod_{i < a} (1 - b / (t + q - i)) with a, b = min(m, q), max(m, q): a short product
    # (a <= k) of factors in (0, 1), summed as log1p terms so small probabilities keep full precision
    shorter = torch.where(needs_ratio, torch.minimum(m, tied_true), 0)
    longer = torch.maximum(m, tied_true).double()
    total = (tied_wrong + tied_true).double()
    log_all_wrong = torch.zeros(m.shape, dtype=torch.float64)
    for i in range(int(shorter.max())):
        term = torch.log1p(-longer / (total - i))
        log_all_wrong += torch.where(i < shorter, term, 0.0)
    hits = torch.where(needs_ratio, -torch.expm1(log_all_wrong), 1.0)
    return torch.where(m <= 0, 0.0, hits)


def _rank_summary(
    prefix: str, above: torch.Tensor, tied_wrong: torch.Tensor, tied_true: torch.Tensor, ks: Sequence[int]
) -> Dict[str, float]:
    summary = {f"{prefix}_R@{k}": 100.0 * _hit_probability(above, tied_wrong, tied_true, k).mean().item() for k in ks}
    expected_ranks = above + 1 + tied_wrong / (tied_true + 1).double()
    summary[f"{prefix}_MedR"] = float(np.floor(np.median(expected_ranks.numpy())))
    summary[f"{prefix}_MeanR"] = expected_ranks.mean().item()
    return summary


def retrieval_metrics(
    text_embeddings: ArrayLike,
    image_index: Union[Sequence[int], np.ndarray, torch.Tensor],
    image_embeddings: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> Dict[str, Any]:
    """Chunked image<->text retrieval metrics; see `_DESCRIPTION` for the protocol and the tie rule."""
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"`ks` must be a non-empty list of positive integers, got {list(ks)}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be a positive integer (or None for the default), got {chunk_size!r}.")
    is_number = isinstance(tie_tolerance, (int, float, np.number)) and not isinstance(tie_tolerance, bool)
    if not is_number or not 0 <= tie_tolerance < 1:
        raise ValueError(f"`tie_tolerance` must be a number in [0, 1) (a cosine difference), got {tie_tolerance!r}.")

    texts = _as_matrix(text_embeddings, "text_embeddings")
    image_matrix = _as_matrix(image_embeddings, "image_embeddings")
    if texts.shape[1] != image_matrix.shape[1]:
        raise ValueError(
            f"Embedding dimensions differ: text_embeddings has dim {texts.shape[1]}, image_embeddings has dim "
            f"{image_matrix.shape[1]}. Both modalities must be projected into the same space."
        )
    num_texts, num_images = texts.shape[0], image_matrix.shape[0]
    chunk_size = chunk_size or max(1, SCORE_BLOCK_ELEMENTS // num_images)
    text_scale = _inverse_norms(texts, "text_embeddings", chunk_size)
    images = image_matrix.double() * _inverse_norms(image_matrix, "image_embeddings", chunk_size)[:, None]

    image_index = torch.as_tensor(np.asarray(image_index, dtype=np.int64))
    if image_index.shape != (num_texts,):
        raise ValueError(
            f"`image_index` must hold one entry per text ({num_texts}), got shape {tuple(image_index.shape)}."
        )
    out_of_range = (image_index < 0) | (image_index >= num_images)
    if out_of_range.any():
        raise ValueError(
            f"`image_index` has {int(out_of_range.sum())} value(s) outside [0, {num_images - 1}] "
            f"(e.g. {int(image_index[out_of_range][0])}); it must index rows of `image_embeddings`."
        )
    texts_per_image = torch.bincount(image_index, minlength=num_images)
    num_orphans = int((texts_per_image == 0).sum())
    if num_orphans > 0:
        raise ValueError(
            f"{num_orphans} of {num_images} images have no text, so their image->text rank is undefined; "
            "drop them from `image_embeddings` and re-index `image_index`."
        )

    def unit_texts(start: int, stop: int) -> torch.Tensor:
        return texts[start:stop].double() * text_scale[start:stop, None]

    # image->text needs each image's best true score before its column is counted: the true pairs are only N dot
    # products, so one cheap pass finds them, and the score matrix is then computed once for both directions.
    true_scores = torch.empty(num_texts, dtype=torch.float64)
    for start in range(0, num_texts, chunk_size):
        stop = min(start + chunk_size, num_texts)
        true_scores[start:stop] = (unit_texts(start, stop) * images[image_index[start:stop]]).sum(dim=1)
    best_true = torch.full((num_images,), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, image_index, true_scores, reduce="amax"
    )
    i2t_tied_true = torch.bincount(
        image_index[true_scores >= best_true[image_index] - tie_tolerance], minlength=num_images
    )

    t2i_above = torch.empty(num_texts, dtype=torch.long)
    t2i_tied = torch.empty(num_texts, dtype=torch.long)
    positive_scores = torch.empty(num_texts, dtype=torch.float64)
    i2t_above = torch.zeros(num_images, dtype=torch.long)
    i2t_tied = torch.zeros(num_images, dtype=torch.long)
    text_sum = torch.zeros(texts.shape[1], dtype=torch.float64)
    for start in range(0, num_texts, chunk_size):
        stop = min(start + chunk_size, num_texts)
        chunk = unit_texts(start, stop)
        text_sum += chunk.sum(dim=0)
        scores = chunk @ images.T
        own_index = image_index[start:stop]
        own_scores = scores.gather(1, own_index[:, None])[:, 0]
        positive_scores[start:stop] = own_scores

        # text->image: one true image, in its own band, so a band holding nothing else means no wrong ties.
        above, at_least_mask, in_bands = _count_above_and_band(scores, own_scores, tie_tolerance, dim=1)
        t2i_above[start:stop] = above
        t2i_tied[start:stop] = 0 if in_bands == stop - start else at_least_mask.sum(dim=1) - above - 1
        del at_least_mask

        # image->text: every text counted against each image's best true score, then the image's own texts taken
        # back out with the very values that were counted, so the counts hold wrong texts only, bit for bit.
        best = best_true[own_index]
        own_above = own_scores > best + tie_tolerance
        own_at_least = own_scores >= best - tie_tolerance
        above, at_least_mask, in_bands = _count_above_and_band(scores, best_true, tie_tolerance, dim=0)
        wrong_above = above - torch.bincount(own_index[own_above], minlength=num_images)
        i2t_above += wrong_above
        if in_bands != int((own_at_least & ~own_above).sum()):  # a wrong text tied with some image's best
            at_least = at_least_mask.sum(dim=0) - torch.bincount(own_index[own_at_least], minlength=num_images)
            i2t_tied += at_least - wrong_above
        del at_least_mask, scores

    # The sum over all pairs factorises, so the negative mean needs no N x N buffer.
    all_pairs_sum = (images.sum(0) @ text_sum).item()
    positive_sum = positive_scores.sum().item()
    num_negative_pairs = num_images * num_texts - num_texts
    negative_mean = (all_pairs_sum - positive_sum) / num_negative_pairs if num_negative_pairs else float("nan")

    return {
        **_rank_summary("i2t", i2t_above, i2t_tied, i2t_tied_true, ks),
        **_rank_summary("t2i", t2i_above, t2i_tied, torch.ones_like(t2i_tied), ks),
        "pos_sim": positive_sum / num_texts,
        "neg_sim": negative_mean,
        "num_images": num_images,
        "num_texts": num_texts,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "text_embeddings": datasets.Sequence(datasets.Value("float32")),
                    "image_index": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1707.05612"],
        )

    def _compute(
        self,
        text_embeddings,
        image_index,
        image_embeddings=None,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int | None = None,
        tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    ) -> Dict[str, Any]:
        if image_embeddings is None:
            raise ValueError("`image_embeddings` is required: pass `compute(..., image_embeddings=...)`.")
        if len(text_embeddings) == 0:
            raise ValueError("No texts to evaluate: pass `text_embeddings` and `image_index` (or call `add_batch`).")
        return retrieval_metrics(
            text_embeddings, image_index, image_embeddings, ks=ks, chunk_size=chunk_size, tie_tolerance=tie_tolerance
        )

    # `compute` on arrays already in this process (numpy or torch), without the Arrow round trip: the path for
    # embeddings that were gathered beforehand. Batches added with `add_batch` are not used.
    compute_arrays = staticmethod(retrieval_metrics)
