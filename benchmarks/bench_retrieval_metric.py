"""Benchmark: chunked retrieval metric vs a naive full N x N score matrix, on the same random data in one run.

Times `retrieval_metrics` from `metrics/retrieval/retrieval.py` (the core of the evaluate module, without the Arrow
round trip) against a baseline that materialises every text x image score at once (same tie rule), checks both give
the same ranks, and reports the size of the largest score buffer each one allocates (chunk_size x N vs N x N float64).

Usage:
    python benchmarks/bench_retrieval_metric.py [--chunk-size 256] [--dim 256] [--repeats 3]
"""

import argparse
import importlib.util
import math
import time
from pathlib import Path

import numpy as np
import torch


METRIC_FILE = Path(__file__).resolve().parents[1] / "metrics" / "retrieval" / "retrieval.py"
TEXTS_PER_IMAGE = 5
FLOAT64_BYTES = 8


def load_retrieval_module():
    spec = importlib.util.spec_from_file_location("retrieval_metric", METRIC_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def naive_retrieval_ranks(texts: np.ndarray, image_index: np.ndarray, images: np.ndarray, tie_tolerance: float):
    """Baseline: one full (num_texts, num_images) score matrix, same tie rule as the metric (expected ranks)."""
    texts = torch.nn.functional.normalize(torch.from_numpy(texts).double(), dim=-1)
    images = torch.nn.functional.normalize(torch.from_numpy(images).double(), dim=-1)
    image_index = torch.from_numpy(image_index)
    scores = texts @ images.T
    true_scores = scores.gather(1, image_index[:, None])
    t2i_above = (scores > true_scores + tie_tolerance).sum(dim=1)
    t2i_tied = (scores >= true_scores - tie_tolerance).sum(dim=1) - t2i_above - 1
    t2i_ranks = t2i_above + 1 + t2i_tied.double() / 2
    best_true_scores = torch.full((len(images),), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, image_index, true_scores[:, 0], reduce="amax"
    )
    i2t_above = (scores > best_true_scores[None, :] + tie_tolerance).sum(dim=0)
    i2t_within = (scores >= best_true_scores[None, :] - tie_tolerance).sum(dim=0) - i2t_above
    i2t_tied_true = torch.bincount(
        image_index[true_scores[:, 0] >= best_true_scores[image_index] - tie_tolerance], minlength=len(images)
    )
    i2t_ranks = i2t_above + 1 + (i2t_within - i2t_tied_true) / (i2t_tied_true + 1).double()
    return i2t_ranks, t2i_ranks


def best_time(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-texts", type=int, nargs="+", default=[1_000, 5_000, 10_000])
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    retrieval = load_retrieval_module()
    rng = np.random.default_rng(0)
    print(
        f"chunk_size={args.chunk_size}, dim={args.dim}, {TEXTS_PER_IMAGE} texts per image, float64 scores, "
        f"best of {args.repeats}, torch threads={torch.get_num_threads()}"
    )
    header = (
        f"{'texts':>7} {'images':>7} {'naive s':>9} {'chunked s':>10} {'time ratio':>11} "
        f"{'naive MiB':>10} {'chunked MiB':>12} {'memory ratio':>13}"
    )
    print(header)
    print("-" * len(header))
    for num_texts in args.num_texts:
        num_images = num_texts // TEXTS_PER_IMAGE
        images = rng.standard_normal((num_images, args.dim)).astype(np.float32)
        image_index = np.repeat(np.arange(num_images), TEXTS_PER_IMAGE)
        texts = (images[image_index] + 2.0 * rng.standard_normal((num_texts, args.dim))).astype(np.float32)

        tolerance = retrieval.DEFAULT_TIE_TOLERANCE
        i2t_ranks, t2i_ranks = naive_retrieval_ranks(texts, image_index, images, tolerance)
        chunked = retrieval.retrieval_metrics(texts, image_index, images, ks=[1], chunk_size=args.chunk_size)
        for prefix, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
            assert math.isclose(chunked[f"{prefix}_MeanR"], ranks.mean().item(), rel_tol=1e-12), f"{prefix} MeanR"
            assert chunked[f"{prefix}_MedR"] == np.floor(np.median(ranks.numpy())), f"{prefix} MedR disagrees"

        naive_seconds = best_time(lambda: naive_retrieval_ranks(texts, image_index, images, tolerance), args.repeats)
        chunked_seconds = best_time(
            lambda: retrieval.retrieval_metrics(texts, image_index, images, ks=[1], chunk_size=args.chunk_size),
            args.repeats,
        )
        naive_bytes = num_texts * num_images * FLOAT64_BYTES
        chunked_bytes = FLOAT64_BYTES * max(
            min(args.chunk_size, num_texts) * num_images, min(args.chunk_size, num_images) * num_texts
        )
        print(
            f"{num_texts:>7} {num_images:>7} {naive_seconds:>9.3f} {chunked_seconds:>10.3f} "
            f"{chunked_seconds / naive_seconds:>10.2f}x {naive_bytes / 2**20:>10.1f} {chunked_bytes / 2**20:>12.1f} "
            f"{chunked_bytes / naive_bytes:>12.3f}x"
        )
    print("time ratio = chunked / naive; memory ratio = largest chunked score buffer / full N x N matrix.")


if __name__ == "__main__":
    main()
