"""Smoke runs of the evaluation, generation and faiss benchmarks: each runs with `--quick` in its own process and
must exit 0 and print its table. Timings are printed, never asserted (see benchmarks/common.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# benchmark file -> (table headers it must print, rows each table must reach: a path or decoder name)
EXPECTED = {
    "bench_retrieval_metric.py": (
        ["| texts | images | path | seconds | ratio vs bare | peak MiB |"],
        ["| bare |", "| array path |", "| evaluate.compute |", "(estimate)"],
    ),
    "bench_generation.py": (
        ["| decoder | search | new tokens | recompute tok/s | cache tok/s | cache / recompute | same tokens | built-in |"],
        ["Sign2Text", "RAG captioner GPT-2", "concat)", "prompt, 8-token prompt)", "Multimodal-CoT T5", "| greedy |", "| beam 4 |"],
    ),
    "bench_faiss.py": (
        [
            "| captions | encode only captions/s | build captions/s | build / encode time |",
            "| index | setting | ms / batch | time vs Flat | recall@10 vs Flat | recall@1 vs Flat | R@1 (own caption) |",
            "| entries | index | setting | build s | ms / batch | speed-up vs Flat |",
            "| entries | index | setting | search ms | training step ms | search / step |",
        ],
        ["| Flat | exact |", "| IVF16,Flat |", "| HNSW32 |", "| Flat @ 16 dims + re-rank |", "| SQ8 @ 16 dims + re-rank |"],
    ),
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_runs_quick_and_prints_its_table(script):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), "--quick", "--threads", "1"],
        capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-3000:]}"
    headers, rows = EXPECTED[script]
    for header in headers:
        assert header in result.stdout, f"{script} printed no table with header {header!r}:\n{result.stdout}"
    for row in rows:
        assert row in result.stdout, f"{script} printed no row for {row!r}:\n{result.stdout}"
    assert "Machine: " in result.stdout
