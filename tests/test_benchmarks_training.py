"""The training benchmarks run end to end at `--quick` sizes and print their tables; no timing is asserted (a shared
machine cannot hold a clock to account). Both run at once, as subprocesses, the way a user runs them."""

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "bench_contrastive_step.py": [
        "| total batch | k | micro-batch | plain step | feature-cached | ratio |",
        "| vocabulary | total batch | k | dense per micro-batch | once per step | ratio |",
        "| batch | VisionTextDualEncoder | VLP | ratio |",
    ],
    "bench_input_pipeline.py": ["| workers | batch | collate | pre-built batch | data loader | idle | ratio |"],
}


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.CompletedProcess]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    running = {
        name: subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "benchmarks" / name), "--quick", "--threads", "1"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in BENCHMARKS
    }  # fmt: skip
    results = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_runs_quick_and_prints_its_tables(outputs, name):
    result = outputs[name]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cores, torch" in result.stdout  # the machine line
    for header in BENCHMARKS[name]:
        assert header in result.stdout, result.stdout
    table_rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert table_rows and all(float(line.rstrip(" |").rsplit("|", 1)[1]) > 0 for line in table_rows)


def test_contrastive_benchmark_builds_the_model_train_vlp_builds():
    """The benchmark writes out train/vlp.py's default head (importing the task would double its run time)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from bench_contrastive_step import VLP_TASK_HEAD
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    from train.vlp import ModelArguments

    defaults = ModelArguments()
    assert {f.name for f in fields(ModelArguments)} >= set(VLP_TASK_HEAD) - {"num_pooling_heads"}
    for name, value in VLP_TASK_HEAD.items():
        if name == "matryoshka_dims":
            assert value == [int(d) for d in defaults.matryoshka_dims.split(",")]
        elif name == "num_pooling_heads":
            assert value == 4  # fixed in VLPTask.build_model
        else:
            assert value == getattr(defaults, name), name
