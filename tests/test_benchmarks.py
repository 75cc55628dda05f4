"""Every benchmark runs end to end at `--quick` sizes and prints its tables. Timings are printed, never asserted: a
shared machine cannot hold a clock to account (see benchmarks/common.py). The scripts run in this process, through
their `main(argv)`, so the suite pays for torch's import once, not once per benchmark."""

import importlib.util
import sys
from dataclasses import fields

import pytest

from conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"

# benchmark -> (table headers it must print, rows its tables must reach: a path, decoder or index name)
EXPECTED = {
    "bench_contrastive_step": (
        [
            "| total batch | k | micro-batch | plain step | feature-cached | ratio |",
            "| vocabulary | total batch | k | dense per micro-batch | once per step | ratio |",
            "| batch | VisionTextDualEncoder | VLP | ratio |",
        ],
        [],
    ),
    "bench_input_pipeline": (["| workers | batch | collate | pre-built batch | data loader | idle | ratio |"], []),
    "bench_retrieval_metric": (
        ["| texts | images | path | seconds | ratio vs bare | peak MiB |"],
        ["| bare |", "| array path |", "| evaluate.compute |", "(estimate)"],
    ),
    "bench_generation": (
        ["| decoder | search | new tokens | recompute tok/s | cache tok/s | cache / recompute | same tokens | built-in |"],
        ["Sign2Text", "RAG captioner GPT-2", "concat)", "prompt, 8-token prompt)", "Multimodal-CoT T5", "| greedy |", "| beam 4 |"],
    ),
    "bench_faiss": (
        [
            "| captions | encode only captions/s | build captions/s | build / encode time |",
            "| index | setting | ms / batch | time vs Flat | recall@10 vs Flat | recall@1 vs Flat | R@1 (own caption) |",
            "| entries | index | setting | build s | ms / batch | speed-up vs Flat |",
            "| entries | index | setting | search ms | training step ms | search / step |",
        ],
        ["| Flat | exact |", "| IVF16,Flat |", "| HNSW32 |", "| Flat @ 16 dims + re-rank |", "| SQ8 @ 16 dims + re-rank |"],
    ),
}


def load_benchmark(name: str):
    """The script as a module, importing its neighbours (`common`) as it does when run from its folder."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_runs_quick_and_prints_its_tables(name, capsys):
    load_benchmark(name).main(["--quick", "--threads", "1"])
    printed = capsys.readouterr().out
    headers, rows = EXPECTED[name]
    assert "cores, torch" in printed, f"{name} printed no machine line:\n{printed}"
    for header in headers:
        assert header in printed, f"{name} printed no table with header {header!r}:\n{printed}"
    for row in rows:
        assert row in printed, f"{name} printed no row for {row!r}:\n{printed}"


def test_contrastive_benchmark_builds_the_model_train_vlp_builds():
    """The benchmark writes out train/vlp.py's default head; it must stay the one the trainer builds."""
    from train.vlp import ModelArguments

    head = load_benchmark("bench_contrastive_step").VLP_TASK_HEAD
    defaults = ModelArguments()
    assert {f.name for f in fields(ModelArguments)} >= set(head) - {"num_pooling_heads"}
    for name, value in head.items():
        if name == "matryoshka_dims":
            assert value == [int(d) for d in defaults.matryoshka_dims.split(",")]
        elif name == "num_pooling_heads":
            assert value == 4  # fixed in VLPTask.build_model
        else:
            assert value == getattr(defaults, name), name
