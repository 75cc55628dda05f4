"""What every benchmark shares: the command line (`--quick`, `--threads`, `--repeats`), a timer, the machine's
name, and a markdown table whose last columns compare ours against a baseline measured in the same run.

Benchmarks print ratios, never assert them: a ratio is only meaningful against a baseline timed in the same process
on the same data, and a unit test on a shared machine cannot hold a clock to account.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark takes; add the benchmark's own sizes to it."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat: a smoke run, not a figure")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement; the median is kept")
    return parser


def apply_common_arguments(args: argparse.Namespace) -> None:
    """Set the thread count and shrink repeats under `--quick`; call once after parsing."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 1


def median_seconds(function, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `function()` over `repeats` calls after `warmup` untimed ones (CUDA synchronised)."""
    for _ in range(warmup):
        function()
    timings = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def interleaved_median_seconds(calls: dict, repeats: int, warmup_rounds: int = 1) -> dict:
    """Median wall seconds of each of `calls` ({label: function}), the calls taking turns within every round after
    `warmup_rounds` untimed ones: on a shared machine a slow minute then hits all of them alike, rather than
    whichever was being timed."""
    timings = {label: [] for label in calls}
    for round_number in range(warmup_rounds + repeats):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            if round_number >= warmup_rounds:
                timings[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in timings.items()}


def cpu_seconds(function) -> float:
    """CPU seconds this process spends in `function()`: on a machine shared with other jobs, wall time measures their
    load as much as ours, while with one torch thread (`--threads 1`) CPU time is the work done."""
    start = time.process_time()
    function()
    return time.process_time() - start


def machine_description() -> str:
    """One line naming the machine, for the README's Performance section."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{accelerator}"
    )


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    """A markdown table, floats to three significant figures, under a title line."""

    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    print(f"\n{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(cell(value) for value in row) + " |")


__all__ = [
    "apply_common_arguments",
    "benchmark_parser",
    "cpu_seconds",
    "interleaved_median_seconds",
    "machine_description",
    "median_seconds",
    "print_table",
]
