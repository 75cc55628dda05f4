"""Benchmark: the shipped retrieval metric at scale, against a bare chunked matmul + rank count written inline.

Three ways to score the same random embeddings (5 texts per image, float32 inputs, as an encoder gives them):

- **bare**: what a user would write inline: float64 unit rows, one chunked text x image matmul (the metric's default
  chunk), rank = 1 + the candidates scoring higher (counted in int32, as the metric does), R@K from the ranks. No tie
  rule, no input checks, no similarity diagnostics.
- **array path**: `retrieval.compute_arrays(...)` (the module's own function on arrays, no Arrow).
- **evaluate.compute**: `retrieval.compute(text_embeddings=..., ...)`, which stores the texts in Arrow as lists of
  floats and reads them back.

Time is measured in this process, the median of `--repeats` rounds in which the paths take turns, after one warm-up
(sizes above 20,000 texts: the one run that also checks the paths agree and measures memory). Peak memory is the call's own: before the call the
kernel's peak-RSS counter is reset (`/proc/self/clear_refs`), and the call's figure is peak RSS minus the RSS before
it (VmHWM - VmRSS from `/proc/self/status`), so the inputs the caller already holds are not counted; glibc is told to
give every block above 64 KiB back to the kernel when freed, so a call cannot reuse an earlier call's freed memory
unseen. torch's CPU allocations are invisible to tracemalloc, hence RSS. The largest size is then extrapolated to `--estimate` texts:
time by its measured seconds per score, memory along the line through the last two sizes.

Usage:
    python benchmarks/bench_retrieval_metric.py [--num-texts 10000 100000] [--dim 256] [--threads 1]
"""

import ctypes
import ctypes.util
import gc
import math
import time

import numpy as np
import torch

from common import (
    apply_common_arguments,
    benchmark_parser,
    interleaved_median_seconds,
    machine_description,
    print_table,
)


TEXTS_PER_IMAGE = 5
KS = (1, 5, 10)
PATHS = ("bare", "array path", "evaluate.compute")


def load_metric():
    import evaluate

    from metrics import metric_path

    return evaluate.load(str(metric_path("retrieval")), keep_in_memory=True)


def bare_chunked_ranks(texts: np.ndarray, image_index: np.ndarray, images: np.ndarray, chunk_size: int) -> dict:
    """The inline baseline: float64 unit rows, one chunked matmul for both directions, rank = 1 + higher scores."""
    texts = torch.from_numpy(texts).double()
    texts /= texts.norm(dim=1, keepdim=True)
    images = torch.from_numpy(images).double()
    images /= images.norm(dim=1, keepdim=True)
    index = torch.from_numpy(image_index)
    best_true = torch.full((len(images),), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, index, (texts * images[index]).sum(dim=1), reduce="amax"
    )
    t2i_ranks = torch.empty(len(texts), dtype=torch.long)
    i2t_ranks = torch.ones(len(images), dtype=torch.long)
    for start in range(0, len(texts), chunk_size):
        scores = texts[start : start + chunk_size] @ images.T
        true_scores = scores.gather(1, index[start : start + chunk_size, None])
        t2i_ranks[start : start + chunk_size] = 1 + (scores > true_scores).sum(dim=1, dtype=torch.int32)
        # 1e-12: an image's own best text can come out of the matmul an ulp above its row-wise dot product
        i2t_ranks += (scores > best_true + 1e-12).sum(dim=0, dtype=torch.int32)
    return {
        f"{prefix}_R@{k}": 100.0 * (ranks <= k).double().mean().item()
        for prefix, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks))
        for k in KS
    }


def run_path(path: str, metric, texts, image_index, images, chunk_size: int | None) -> dict:
    if path == "bare":
        return bare_chunked_ranks(texts, image_index, images, chunk_size or max(1, 2**24 // len(images)))
    if path == "array path":
        return metric.compute_arrays(texts, image_index, images, ks=KS, chunk_size=chunk_size)
    return metric.compute(
        text_embeddings=texts, image_index=image_index, image_embeddings=images, ks=list(KS), chunk_size=chunk_size
    )


def random_pairs(num_texts: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    num_images = num_texts // TEXTS_PER_IMAGE
    images = rng.standard_normal((num_images, dim), dtype=np.float32)
    image_index = np.repeat(np.arange(num_images), TEXTS_PER_IMAGE)
    texts = images[image_index] + np.float32(2.0) * rng.standard_normal((num_texts, dim), dtype=np.float32)
    return texts, image_index, images


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def fix_mmap_threshold() -> None:
    """Make glibc serve every block above 64 KiB with its own mmap and return it to the kernel when freed (a fixed
    threshold also stops glibc raising it as large blocks are freed): then one call's freed buffers do not stay
    resident for the next call to reuse unseen, and the RSS peak of a call is its own."""
    M_MMAP_THRESHOLD = -3
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def peak_memory_mib(function) -> float:
    """Peak RSS of `function()` above the RSS before the call, in MiB: the kernel's peak counter (VmHWM) is reset to
    the current RSS through /proc/self/clear_refs first, so what the process held before is not counted."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # Linux >= 4.0: resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    function()
    return (_status_kib("VmHWM") - before) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--num-texts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=None, help="texts per chunk (default: the metric's own)")
    parser.add_argument("--estimate", type=int, default=1_000_000, help="texts to extrapolate the last size to")
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    if args.quick:  # a smoke run, maybe inside another process: leave its allocator alone
        args.num_texts, args.dim = [500, 1000], 32
    else:
        fix_mmap_threshold()

    metric = load_metric()
    threads = torch.get_num_threads()
    print(f"Machine: {machine_description()}")
    print(
        f"{TEXTS_PER_IMAGE} texts per image, dim {args.dim}, chunk_size {args.chunk_size or '2**24 // images'}, "
        "float32 inputs, "
        f"float64 scores; time: median of {args.repeats} (one run above 20,000 texts), {threads} torch threads; memory: the call's own peak RSS"
    )
    rows, measured = [], []
    for num_texts in args.num_texts:
        texts, image_index, images = random_pairs(num_texts, args.dim)
        seconds, results, peaks = {}, {}, {}
        for path in PATHS:
            outputs = []
            start = time.perf_counter()
            peaks[path] = peak_memory_mib(
                lambda: outputs.append(run_path(path, metric, texts, image_index, images, args.chunk_size))
            )
            seconds[path] = time.perf_counter() - start
            results[path] = outputs[0]
        if num_texts <= 20_000:  # the runs above were the warm-up (and the memory measurement)
            calls = {
                path: lambda path=path: run_path(path, metric, texts, image_index, images, args.chunk_size)
                for path in PATHS
            }
            seconds = interleaved_median_seconds(calls, args.repeats, warmup_rounds=0)
        for path in PATHS[1:]:  # random float embeddings have no ties, so every path must agree on R@K
            for key, value in results["bare"].items():
                assert math.isclose(results[path][key], value, abs_tol=1e-9), f"{path} {key} disagrees with bare"
        measured.append((num_texts, seconds, peaks))
        for path in PATHS:
            rows.append([num_texts, len(images), path, seconds[path], seconds[path] / seconds["bare"], peaks[path]])
    if len(measured) >= 2:
        (small, _, small_peaks), (large, large_seconds, large_peaks) = measured[-2:]
        score_growth = (args.estimate / large) ** 2  # texts and images both grow by estimate / large
        for path in PATHS:
            memory_slope = (large_peaks[path] - small_peaks[path]) / (large - small)
            rows.append(
                [
                    f"{args.estimate} (estimate)",
                    args.estimate // TEXTS_PER_IMAGE,
                    path,
                    large_seconds[path] * score_growth,
                    large_seconds[path] / large_seconds["bare"],
                    max(large_peaks[path], large_peaks[path] + memory_slope * (args.estimate - large)),
                ]
            )
    print_table(
        "Retrieval metric: bare chunked matmul + rank count vs the shipped module",
        ["texts", "images", "path", "seconds", "ratio vs bare", "peak MiB"],
        rows,
    )
    print(
        "Estimate rows: time = the largest size's seconds per score x the scores of the estimate (every path is "
        "dominated by its N x M work there); memory grown linearly along the last two sizes "
        "(never below the largest size's)."
    )


if __name__ == "__main__":
    main()
