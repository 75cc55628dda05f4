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
scores are cosine similarities. The rank of a query is 1 + the number of candidates scoring strictly higher than
its true match: a candidate tied with the true match does not push it down.

- text->image (t2i): each text has exactly one true image.
- image->text (i2t): the rank of an image is the best rank over all of its texts, so R@K counts an image as a hit
  if any of its texts is in the top K.

Scores are computed `chunk_size` queries at a time, so memory grows as chunk_size x N rather than N x N.
"""

_KWARGS_DESCRIPTION = """
Args:
    text_embeddings (`list` of `list` of `float`): one embedding per text, shape (num_texts, dim).
    image_index (`list` of `int`): for each text, the row of its true image in `image_embeddings`.
    image_embeddings (`np.ndarray`, `torch.Tensor` or nested `list`): shape (num_images, dim). Every image must own
        at least one text.
    ks (`Sequence[int]`, defaults to `(1, 5, 10)`): cut-offs for Recall@K.
    chunk_size (`int`, defaults to 1024): number of queries scored at once.

Returns:
    `i2t_R@K`, `t2i_R@K` (percent, 0-100) for each K; `i2t_MedR`, `t2i_MedR` (median rank, rounded down as in the
    VSE++ / Karpathy-split evaluation); `i2t_MeanR`, `t2i_MeanR`; `pos_sim` (mean cosine of the true pairs);
    `neg_sim` (mean cosine of all non-matching pairs, NaN when there is a single image); `num_images`, `num_texts`.

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


def _as_float64_matrix(values: ArrayLike, name: str) -> torch.Tensor:
    """Float64 keeps near-ties from flipping with the matmul kernel, so ranks do not depend on `chunk_size`."""
    if isinstance(values, torch.Tensor):
        matrix = values.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            matrix = torch.from_numpy(np.asarray(values, dtype=np.float64))
        except (ValueError, TypeError) as error:
            raise ValueError(f"`{name}` must be a rectangular array of numbers: {error}") from None
    if matrix.ndim != 2:
        raise ValueError(f"`{name}` must have shape (num_items, dim), got shape {tuple(matrix.shape)}.")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(matrix.shape)}); pass at least one embedding.")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; check the encoder outputs.")
    return torch.nn.functional.normalize(matrix, dim=-1)


def _rank_summary(prefix: str, ranks: torch.Tensor, ks: Sequence[int]) -> Dict[str, float]:
    summary = {f"{prefix}_R@{k}": 100.0 * (ranks <= k).double().mean().item() for k in ks}
    summary[f"{prefix}_MedR"] = float(np.floor(np.median(ranks.numpy())))
    summary[f"{prefix}_MeanR"] = ranks.double().mean().item()
    return summary


def retrieval_metrics(
    text_embeddings: ArrayLike,
    image_index: Union[Sequence[int], np.ndarray, torch.Tensor],
    image_embeddings: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> Dict[str, Any]:
    """Chunked image<->text retrieval metrics; see `_DESCRIPTION` for the protocol."""
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"`ks` must be a non-empty list of positive integers, got {list(ks)}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")

    texts = _as_float64_matrix(text_embeddings, "text_embeddings")
    images = _as_float64_matrix(image_embeddings, "image_embeddings")
    if texts.shape[1] != images.shape[1]:
        raise ValueError(
            f"Embedding dimensions differ: text_embeddings has dim {texts.shape[1]}, image_embeddings has dim "
            f"{images.shape[1]}. Both modalities must be projected into the same space."
        )
    num_texts, num_images = texts.shape[0], images.shape[0]

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

    t2i_ranks = torch.empty(num_texts, dtype=torch.long)
    positive_scores = torch.empty(num_texts, dtype=torch.float64)
    for start in range(0, num_texts, chunk_size):
        stop = min(start + chunk_size, num_texts)
        scores = texts[start:stop] @ images.T
        true_scores = scores.gather(1, image_index[start:stop, None])
        t2i_ranks[start:stop] = 1 + (scores > true_scores).sum(dim=1)
        positive_scores[start:stop] = true_scores[:, 0]

    # Texts sorted by image, so the texts of images [start, stop) form one contiguous slice of `texts_by_image`.
    texts_by_image = torch.argsort(image_index, stable=True)
    text_offsets = torch.cat([torch.zeros(1, dtype=torch.long), texts_per_image.cumsum(0)]).tolist()
    i2t_ranks = torch.empty(num_images, dtype=torch.long)
    for start in range(0, num_images, chunk_size):
        stop = min(start + chunk_size, num_images)
        scores = images[start:stop] @ texts.T
        own_texts = texts_by_image[text_offsets[start] : text_offsets[stop]]
        own_rows = image_index[own_texts] - start
        best_true_scores = torch.full((stop - start,), -torch.inf, dtype=torch.float64).scatter_reduce(
            0, own_rows, scores[own_rows, own_texts], reduce="amax"
        )
        i2t_ranks[start:stop] = 1 + (scores > best_true_scores[:, None]).sum(dim=1)

    # The sum over all pairs factorises, so the negative mean needs no N x N buffer.
    all_pairs_sum = (images.sum(0) @ texts.sum(0)).item()
    positive_sum = positive_scores.sum().item()
    num_negative_pairs = num_images * num_texts - num_texts
    negative_mean = (all_pairs_sum - positive_sum) / num_negative_pairs if num_negative_pairs else float("nan")

    return {
        **_rank_summary("i2t", i2t_ranks, ks),
        **_rank_summary("t2i", t2i_ranks, ks),
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
        chunk_size: int = 1024,
    ) -> Dict[str, Any]:
        if image_embeddings is None:
            raise ValueError("`image_embeddings` is required: pass `compute(..., image_embeddings=...)`.")
        if len(text_embeddings) == 0:
            raise ValueError("No texts to evaluate: pass `text_embeddings` and `image_index` (or call `add_batch`).")
        return retrieval_metrics(text_embeddings, image_index, image_embeddings, ks=ks, chunk_size=chunk_size)
