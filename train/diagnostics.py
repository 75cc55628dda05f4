"""Collapse diagnostics shared by the VLP and Sign2Text trainers.

Two failures look fine in the loss curve but ruin a run: the embedding space collapses into a narrow cone (true
pairs score high, but so does everything else: PosSim 0.96 with NegSim 0.91), and the decoder ignores its visual
input and emits the same few fluent sentences for every clip. These functions measure both; `CollapseMonitor`
turns the numbers into a warning that says what to try.
"""

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .evaluation import EncodedPairs, RetrievalReport, load_metric, unit_rows

logger = logging.getLogger(__name__)


def embedding_check_arguments(pairs: EncodedPairs, retrieval: RetrievalReport | None = None) -> dict:
    """`CollapseMonitor.check_embeddings` arguments for encoded held-out pairs. With the run's `retrieval` report,
    PosSim and NegSim come from it instead of a second pass of the retrieval metric."""
    arguments = {
        "visual_embeds": pairs.visual,
        "text_embeds": pairs.text,
        "positives": pairs.owner,
        "positives_from": pairs.grouped,
    }
    if retrieval is not None:
        arguments["similarities"] = (retrieval.headline["pos_sim"], retrieval.headline["neg_sim"])
    return arguments


class CollapseWarning(UserWarning):
    """Embeddings or generations have collapsed; the message holds the numbers and what to try."""


def _as_numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _mean_pairwise_cosine(embeddings, name: str) -> float:
    """Mean cosine over distinct pairs, from the norm of the sum of unit vectors (no N x N matrix); NaN below 2."""
    unit = unit_rows(embeddings, name).astype(np.float64)
    count = unit.shape[0]
    if count < 2:
        return float("nan")
    return float((np.square(unit.sum(0)).sum() - count) / (count * (count - 1)))


def embedding_collapse_stats(
    visual_embeds: np.ndarray | torch.Tensor,
    text_embeds: np.ndarray | torch.Tensor,
    positives: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    *,
    positives_from: str = "text",
    similarities: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Similarity statistics that expose a collapsed joint embedding space.

    Args:
        visual_embeds: `(num_visual, dim)`, normalised or not.
        text_embeds: `(num_texts, dim)`.
        positives: which pairs are true. With `positives_from="text"` (the retrieval metric's convention, several
            captions per image), one entry per text: the row of its visual item. With `positives_from="visual"`
            (several clips per sentence), one entry per visual item: the row of its text. `None` pairs row i with
            row i.
        similarities: `(pos_sim, neg_sim)` already measured by the retrieval metric on these embeddings; skips
            computing them again.

    Returns:
        `pos_sim` (mean cosine of true pairs), `neg_sim` (mean cosine of all other cross-modal pairs), `margin`
        (their difference: near 0 means a random negative scores like the true match), and `visual_self_sim` /
        `text_self_sim` (mean cosine between different items of one modality: near 1 means all embeddings point
        the same way).
    """
    if positives_from not in ("text", "visual"):
        raise ValueError(f"positives_from must be 'text' or 'visual', got {positives_from!r}.")
    if positives is None:
        if len(visual_embeds) != len(text_embeds):
            raise ValueError(
                f"Without `positives`, row i of each modality is a pair, but there are {len(visual_embeds)} visual "
                f"and {len(text_embeds)} text embeddings; pass `positives`."
            )
        positives = np.arange(len(text_embeds))
    if similarities is None:
        # Cosine is symmetric, so the side with one entry per row plays the metric's "text" role.
        queries, candidates = (text_embeds, visual_embeds) if positives_from == "text" else (visual_embeds, text_embeds)
        retrieval = load_metric("retrieval").compute(
            text_embeddings=_as_numpy(queries), image_index=_as_numpy(positives), image_embeddings=_as_numpy(candidates), ks=[1]
        )
        similarities = (retrieval["pos_sim"], retrieval["neg_sim"])
    pos_sim, neg_sim = similarities
    return {
        "pos_sim": pos_sim,
        "neg_sim": neg_sim,
        "margin": pos_sim - neg_sim,
        "visual_self_sim": _mean_pairwise_cosine(visual_embeds, "visual_embeds"),
        "text_self_sim": _mean_pairwise_cosine(text_embeds, "text_embeds"),
    }


def _distinct_n(token_lists: list[tuple[str, ...]], n: int) -> float:
    ngrams = [tokens[i : i + n] for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def generation_collapse_stats(predictions: Sequence[str]) -> dict[str, float | str | int]:
    """Diversity of a corpus of generated texts; outputs are compared and split into n-grams by whitespace.

    Returns:
        `distinct_output_share` (distinct outputs / outputs), `distinct_1` and `distinct_2` (distinct n-grams /
        n-grams over the whole corpus, 0 when there are none), `most_common_output` and `most_common_share`, and
        `num_predictions`.
    """
    if isinstance(predictions, str) or len(predictions) == 0:
        raise ValueError("predictions must be a non-empty list of strings.")
    token_lists = [tuple(text.split()) for text in predictions]
    counts = Counter(token_lists)
    most_common, most_common_count = counts.most_common(1)[0]
    return {
        "distinct_output_share": len(counts) / len(token_lists),
        "distinct_1": _distinct_n(token_lists, 1),
        "distinct_2": _distinct_n(token_lists, 2),
        "most_common_output": " ".join(most_common),
        "most_common_share": most_common_count / len(token_lists),
        "num_predictions": len(token_lists),
    }


class CollapseMonitor:
    """Computes the collapse statistics and warns when they cross a threshold; healthy inputs stay silent.

    Args:
        margin_threshold: warn when PosSim - NegSim falls below this.
        distinct_threshold: warn when the share of distinct generations falls below this, relative to the
            references' own share when references are given (an eval set where each sentence has several clips
            should repeat outputs).
        logger: where to report; `None` raises a `CollapseWarning` through `warnings.warn` instead.
    """

    def __init__(
        self, margin_threshold: float = 0.1, distinct_threshold: float = 0.5, logger: logging.Logger | None = None
    ):
        if not np.isfinite(margin_threshold):
            raise ValueError(f"margin_threshold must be a finite number, got {margin_threshold}.")
        if not 0 < distinct_threshold <= 1:
            raise ValueError(f"distinct_threshold must be in (0, 1], got {distinct_threshold}.")
        self.margin_threshold = margin_threshold
        self.distinct_threshold = distinct_threshold
        self.logger = logger

    def _report(self, message: str) -> None:
        if self.logger is None:
            warnings.warn(message, CollapseWarning, stacklevel=3)
        else:
            self.logger.warning(message)

    def check_embeddings(
        self, visual_embeds, text_embeds, positives=None, *, positives_from: str = "text", similarities=None
    ) -> dict:
        """`embedding_collapse_stats` plus `collapsed`; warns when the margin is under `margin_threshold`."""
        stats = embedding_collapse_stats(
            visual_embeds, text_embeds, positives, positives_from=positives_from, similarities=similarities
        )
        stats["collapsed"] = bool(stats["margin"] < self.margin_threshold)
        if stats["collapsed"]:
            self._report(
                f"Embedding collapse: PosSim {stats['pos_sim']:.3f} but NegSim {stats['neg_sim']:.3f}, margin "
                f"{stats['margin']:.3f} < {self.margin_threshold}; mean cosine between different items is "
                f"{stats['visual_self_sim']:.3f} (visual) and {stats['text_self_sim']:.3f} (text), values near 1 mean "
                "a narrow cone. Try a lower temperature, more negatives (larger batches, feature-caching gradient "
                "accumulation, gathering across ranks), a separate projection head, and a visual-text contrastive loss."
            )
        return stats

    def check_generations(self, predictions: Sequence[str], references: Sequence[str] | None = None) -> dict:
        """`generation_collapse_stats` plus `collapsed`; warns when nearly all outputs are the same."""
        stats = generation_collapse_stats(predictions)
        threshold = self.distinct_threshold
        if references is not None:
            stats["reference_distinct_output_share"] = generation_collapse_stats(references)["distinct_output_share"]
            threshold *= stats["reference_distinct_output_share"]
        stats["collapsed"] = bool(stats["distinct_output_share"] < threshold)
        if stats["collapsed"]:
            self._report(
                f"Generation collapse: {stats['distinct_output_share']:.1%} of {stats['num_predictions']} outputs are "
                f"distinct (threshold {threshold:.1%}), distinct-1 {stats['distinct_1']:.3f}, distinct-2 "
                f"{stats['distinct_2']:.3f}; {stats['most_common_share']:.1%} are {stats['most_common_output']!r}. "
                "The decoder is likely ignoring its visual input: check that it receives the encoder states and their "
                "mask, that the embeddings have not collapsed (check_embeddings), and that training has not just "
                "fitted the most frequent sentences."
            )
        return stats


class CollapseCallback:
    """The monitor as a `train_loop` callback: every `eval_steps` it checks a fixed held-out sample, so a collapse is
    reported while it happens instead of after the whole run.

    Args:
        monitor: thresholds and where warnings go.
        embed: returns the keyword arguments of `CollapseMonitor.check_embeddings` for the sample.
        generate: for models that write text, returns `(predictions, references)` for the sample.

    Calling it with the step returns the numbers to log: `pos_sim`, `neg_sim`, `margin`, and for generations
    `distinct_output_share` and `distinct_2`.
    """

    def __init__(
        self,
        monitor: CollapseMonitor,
        embed: Callable[[], dict],
        generate: Callable[[], tuple[Sequence[str], Sequence[str]]] | None = None,
    ):
        self.monitor, self.embed, self.generate = monitor, embed, generate

    def __call__(self, step: int) -> dict[str, float]:
        stats = self.monitor.check_embeddings(**self.embed())
        logs = {name: stats[name] for name in ("pos_sim", "neg_sim", "margin")}
        if self.generate is not None:
            generation = self.monitor.check_generations(*self.generate())
            logs.update({name: generation[name] for name in ("distinct_output_share", "distinct_2")})
        logger.info("Collapse check at step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in logs.items()))
        return logs


__all__ = [
    "CollapseCallback",
    "CollapseMonitor",
    "CollapseWarning",
    "embedding_check_arguments",
    "embedding_collapse_stats",
    "generation_collapse_stats",
]
