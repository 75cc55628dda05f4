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
"""Diagnostic plots of a dual encoder's joint embedding space (t-SNE projection, positive vs negative similarity)."""

import os
import tempfile
from typing import Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from .evaluation import unit_rows


ArrayLike = Union[np.ndarray, torch.Tensor]

NUM_PAIR_LINES = 25
IMAGE_COLOR = "tab:blue"
TEXT_COLOR = "tab:orange"


def _checked_pairs(
    images: np.ndarray, texts: np.ndarray, text_to_image: Optional[Union[Sequence[int], ArrayLike]]
) -> np.ndarray:
    """Returns, for each text, the row of its image; `None` means text i belongs to image i."""
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"Embedding dimensions differ: images have dim {images.shape[1]}, texts have dim {texts.shape[1]}."
        )
    if text_to_image is None:
        if len(images) != len(texts):
            raise ValueError(
                f"Without `text_to_image`, text i is paired with image i, which needs as many texts ({len(texts)}) "
                f"as images ({len(images)}); pass `text_to_image` to give each text's image row."
            )
        return np.arange(len(texts))
    if isinstance(text_to_image, torch.Tensor):
        text_to_image = text_to_image.cpu().numpy()
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if text_to_image.shape != (len(texts),):
        raise ValueError(
            f"`text_to_image` must hold one image row per text ({len(texts)}), got shape {text_to_image.shape}."
        )
    if text_to_image.min() < 0 or text_to_image.max() >= len(images):
        raise ValueError(f"`text_to_image` values must lie in [0, {len(images) - 1}] to index `image_embeds`.")
    return text_to_image


def _save_png(figure: Figure, path: Union[str, os.PathLike]) -> str:
    """Writes to a temporary file next to `path` then renames, so readers never see a half-written PNG."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    file_descriptor, temporary_path = tempfile.mkstemp(dir=directory, suffix=".png.tmp")
    try:
        with os.fdopen(file_descriptor, "wb") as file:
            FigureCanvasAgg(figure).print_png(file)
        os.chmod(temporary_path, 0o644)  # mkstemp creates 0o600; give the plot the usual file mode.
        os.replace(temporary_path, path)
    except BaseException:
        os.unlink(temporary_path)
        raise
    return path


def plot_embedding_projection(
    image_embeds: ArrayLike,
    text_embeds: ArrayLike,
    path: Union[str, os.PathLike],
    text_to_image: Optional[Union[Sequence[int], ArrayLike]] = None,
    max_points: int = 500,
    seed: int = 0,
    names: tuple[str, str] = ("images", "texts"),
) -> str:
    """
    Joint 2-D t-SNE of image and text embeddings, with thin lines joining a few true pairs; `names` label the two
    sets in the legend (e.g. `("sentences", "clips")` when each sentence has several clips).

    Well-aligned encoders put each text next to its image; a modality gap shows as two separate clouds. At most
    `max_points` images are drawn (sampled with `seed`), with at most `max_points` of their texts.
    """
    if max_points < 2:
        raise ValueError(f"`max_points` must be at least 2, got {max_points}.")
    images = unit_rows(image_embeds, "image_embeds")
    texts = unit_rows(text_embeds, "text_embeds")
    text_to_image = _checked_pairs(images, texts, text_to_image)

    rng = np.random.default_rng(seed)
    kept_images = np.sort(rng.choice(len(images), size=min(max_points, len(images)), replace=False))
    candidate_texts = np.flatnonzero(np.isin(text_to_image, kept_images))
    kept_texts = np.sort(rng.choice(candidate_texts, size=min(max_points, len(candidate_texts)), replace=False))
    num_points = len(kept_images) + len(kept_texts)
    if num_points < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {num_points}; pass more embeddings.")

    # Perplexity must stay below the number of points; 30 is scikit-learn's default for larger sets.
    tsne = TSNE(n_components=2, perplexity=min(30.0, (num_points - 1) / 3), init="pca", random_state=seed)
    # Barnes-Hut t-SNE joins its OpenMP threads every iteration; next to a training job one descheduled thread
    # stalls them all (measured over 10x slower), so one thread is the faster and more predictable choice.
    with threadpool_limits(limits=1, user_api="openmp"):
        projected = tsne.fit_transform(np.concatenate([images[kept_images], texts[kept_texts]]))
    image_xy, text_xy = projected[: len(kept_images)], projected[len(kept_images) :]

    figure = Figure(figsize=(7, 7), dpi=120)
    axes = figure.add_subplot()
    image_row = np.searchsorted(kept_images, text_to_image[kept_texts])
    for text_position in rng.choice(len(kept_texts), size=min(NUM_PAIR_LINES, len(kept_texts)), replace=False):
        (x0, y0), (x1, y1) = text_xy[text_position], image_xy[image_row[text_position]]
        axes.plot([x0, x1], [y0, y1], color="gray", linewidth=0.6, alpha=0.7, zorder=1)
    axes.scatter(*image_xy.T, s=14, marker="o", color=IMAGE_COLOR, label=f"{names[0]} ({len(kept_images)})", zorder=2)
    axes.scatter(*text_xy.T, s=14, marker="^", color=TEXT_COLOR, label=f"{names[1]} ({len(kept_texts)})", zorder=2)
    axes.set_title("t-SNE of the joint embedding space (lines: true pairs)")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(loc="best")
    return _save_png(figure, path)


def plot_similarity_distributions(
    image_embeds: ArrayLike,
    text_embeds: ArrayLike,
    text_to_image: Optional[Union[Sequence[int], ArrayLike]],
    path: Union[str, os.PathLike],
    num_negative_samples: int = 20_000,
    seed: int = 0,
) -> str:
    """
    Histograms of cosine similarity for true (image, text) pairs vs non-matching pairs, with their means marked.

    This is the collapse diagnostic: a healthy model separates PosSim from NegSim, a collapsed one puts both near
    the same value. Every true pair is drawn; non-matching pairs are sampled uniformly (`num_negative_samples`,
    `seed`) to keep memory bounded, but the NegSim mean is exact over all of them.
    `text_to_image=None` means text i belongs to image i.
    """
    images = unit_rows(image_embeds, "image_embeds")
    texts = unit_rows(text_embeds, "text_embeds")
    text_to_image = _checked_pairs(images, texts, text_to_image)
    if len(images) < 2:
        raise ValueError("Non-matching pairs need at least 2 images, got 1.")
    if num_negative_samples < 1:
        raise ValueError(f"`num_negative_samples` must be positive, got {num_negative_samples}.")

    positives = np.einsum("nd,nd->n", texts, images[text_to_image])
    num_negative_pairs = len(texts) * (len(images) - 1)
    negative_mean = (images.sum(0) @ texts.sum(0) - positives.sum()) / num_negative_pairs

    # Uniform over non-matching pairs: draw among the other len(images) - 1 images, skipping the true one.
    rng = np.random.default_rng(seed)
    sampled_texts = rng.integers(len(texts), size=num_negative_samples)
    sampled_images = rng.integers(len(images) - 1, size=num_negative_samples)
    sampled_images += sampled_images >= text_to_image[sampled_texts]
    negatives = np.einsum("nd,nd->n", texts[sampled_texts], images[sampled_images])

    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.add_subplot()
    bins = np.linspace(min(positives.min(), negatives.min()), max(positives.max(), negatives.max()), 81)
    for values, mean, color, label in (
        (positives, positives.mean(), IMAGE_COLOR, "true pairs (PosSim)"),
        (negatives, negative_mean, TEXT_COLOR, "non-matching pairs (NegSim)"),
    ):
        axes.hist(values, bins=bins, density=True, alpha=0.5, color=color, label=f"{label}: mean {mean:.3f}")
        axes.axvline(mean, color=color, linestyle="--", linewidth=1.5)
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.set_title(f"PosSim - NegSim = {positives.mean() - negative_mean:.3f}")
    axes.legend(loc="best")
    return _save_png(figure, path)
