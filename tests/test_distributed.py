"""Two CPU processes must compute the same contrastive loss and gradient as one process on the whole batch:
every rank's samples are negatives for every other (all-gather with gradient), for the plain DDP step and for
feature-cached accumulation. The Matryoshka loss gathers each input once, not once per dimension, and `forward`
without `return_loss` runs no collective, so one rank can evaluate alone."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent / "distributed_contrastive_check.py"
REPO_ROOT = SCRIPT.parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], env: dict) -> None:
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    _run([sys.executable, str(SCRIPT), str(folder / "single.pt")], env)
    _run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", str(_free_port()), str(SCRIPT), str(folder / "two.pt")],
        {**env, "ACCELERATE_USE_CPU": "1"},
    )
    return {name: torch.load(folder / f"{name}.pt") for name in ("single", "two")}


def test_two_processes_really_ran(runs):
    assert runs["single"]["world_size"] == 1 and runs["two"]["world_size"] == 2


@pytest.mark.parametrize("step", ["plain", "cached"])
def test_two_process_loss_and_gradient_equal_one_process_on_the_whole_batch(runs, step):
    reference, distributed = runs["single"]["plain"], runs["two"][step]
    torch.testing.assert_close(distributed["loss"], reference["loss"], rtol=1e-10, atol=1e-12)
    assert distributed["grads"].keys() == reference["grads"].keys()
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(distributed["grads"][name], grad, rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_cached_accumulation_equals_plain_step_in_one_process(runs):
    plain, cached = runs["single"]["plain"], runs["single"]["cached"]
    torch.testing.assert_close(cached["loss"], plain["loss"], rtol=1e-10, atol=1e-12)
    for name, grad in plain["grads"].items():
        torch.testing.assert_close(cached["grads"][name], grad, rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_forward_without_return_loss_runs_on_one_rank_while_the_other_waits_outside_any_collective(runs):
    assert runs["two"]["rank0_alone"] == "ok"


@pytest.mark.parametrize("loss_type", ["clip", "siglip"])
def test_matryoshka_loss_gathers_each_input_once_and_equals_the_per_dimension_computation(runs, loss_type):
    """4 dimensions with sentence ids: 3 all-gathers (visual, text, ids) instead of 3 per dimension."""
    for rank, results in enumerate(runs["two"]["matryoshka"]):
        once, per_dimension = results[f"{loss_type}/gathered_once"], results[f"{loss_type}/per_dimension"]
        assert (once["all_gathers"], per_dimension["all_gathers"]) == (3, 12), f"rank {rank}"
        torch.testing.assert_close(once["loss"], per_dimension["loss"], rtol=1e-12, atol=1e-14)
        for name, grad in per_dimension["grads"].items():
            torch.testing.assert_close(once["grads"][name], grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
