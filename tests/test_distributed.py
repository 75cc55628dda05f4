"""Two CPU processes must compute the same contrastive loss and gradient as one process on the whole batch:
every rank's samples are negatives for every other (all-gather with gradient), for the plain DDP step and for
feature-cached accumulation (with the embedding tables' gradients added once per step). The Matryoshka loss gathers
each input once, not once per dimension, and `forward` without `return_loss` runs no collective, so one rank can
evaluate alone."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_vlp_config

from modeling import VLPModel
from train.grad_cache import feature_cached_backward

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


@pytest.mark.parametrize("freeze_text_tower", [False, True])
def test_embedding_tables_gradient_once_per_step_equals_torchs_per_micro_batch(freeze_text_tower):
    """With the model given, feature-cached accumulation adds each embedding table's gradient once per step (no
    dense table-sized gradient per micro-batch): same gradients as without, padding rows untouched, frozen tables
    left without a gradient."""
    torch.manual_seed(0)
    model = VLPModel(tiny_vlp_config(freeze_text_tower=freeze_text_tower)).double().train()
    generator = torch.Generator().manual_seed(3)
    batch = dict(
        input_ids=torch.randint(1, 128, (8, 6), generator=generator),
        attention_mask=torch.ones(8, 6, dtype=torch.long),
        pixel_values=torch.randn(8, 3, 32, 32, generator=generator, dtype=torch.float64),
    )
    batch["input_ids"][::2, 4:] = 0  # [PAD], BERT's padding_idx
    batch["attention_mask"][::2, 4:] = 0
    micro_batches = [{k: v[i : i + 2] for k, v in batch.items()} for i in range(0, 8, 2)]

    def encode(b):
        return model.get_visual_features(pixel_values=b["pixel_values"]), model.get_text_features(b["input_ids"], b["attention_mask"])

    grads = {}
    for per_table in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout in both runs
        feature_cached_backward(micro_batches, encode, lambda v, t: model.contrastive_loss(v, t)[0], model=model if per_table else None)
        grads[per_table] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    word_embeddings = "text_model.embeddings.word_embeddings.weight"
    assert (word_embeddings in grads[True]) != freeze_text_tower
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    if not freeze_text_tower:
        assert torch.all(grads[True][word_embeddings][0] == 0)  # the padding row
