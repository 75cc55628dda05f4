"""`train/vlp.py` end to end: a short run writes a complete, resumable, shareable result."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from fresh_process import run_outside_project
from hub import verify_checkpoint
from modeling import VLPModel
from processing import VLPProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_RUN = [
    "--num_train", "96", "--num_eval", "40", "--image_size", "32", "--per_device_train_batch_size", "16",
    "--checkpointing_steps", "4", "--logging_steps", "2", "--report_to", "none", "--eval_batch_size", "32", "--cpu_threads", "1",
]  # fmt: skip
CAPTIONS = ["a large red circle in the middle", "two shapes: a small blue star and a green square"]


def train(output_dir: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train" / "vlp.py"), "--output_dir", str(output_dir), *SMALL_RUN, *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Eight optimiser steps of two cached micro-batches each, with a checkpoint and a collapse check at step 4."""
    output_dir = tmp_path_factory.mktemp("vlp") / "run"
    train(output_dir, "--max_train_steps", "8", "--gradient_accumulation_steps", "2", "--eval_steps", "4")
    return output_dir


def probe_inputs() -> dict:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), Image.new("RGB", (32, 32), "red")]
    return {"text": CAPTIONS, "images": images}


def test_run_writes_model_card_plots_metrics_and_checkpoints(run):
    final = run / "final"
    verify_checkpoint(final)
    results = json.loads((run / "eval_results.json").read_text())
    assert [entry["step"] for entry in results["train_history"]] == [2, 4, 4, 6, 8]
    check = results["train_history"][2]
    assert check["check/pos_sim"] - check["check/neg_sim"] == pytest.approx(check["check/margin"])
    for direction, num_candidates in (("v2t", 40 * 5), ("t2v", 40)):  # 40 held-out images with 5 captions each
        for dim in (128, 64, 32, 16):
            assert 0.0 <= results["metrics"][f"dim{dim}/{direction}_R@1"] <= 100.0  # percent
            assert 1.0 <= results["metrics"][f"dim{dim}/{direction}_MedR"] <= num_candidates
    card = ModelCard.load(final / "README.md")
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported["v2t_R@1"] == pytest.approx(results["metrics"]["dim128/v2t_R@1"])
    assert "| dim |" in card.text
    for plot in ("tsne.png", "similarities.png"):
        assert Image.open(run / "plots" / plot).size[0] > 100
    # the last step's state is the final model; checkpoints are for resuming an interrupted run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert not list(run.rglob("*.tmp"))


def test_resume_after_a_kill_ends_where_the_uninterrupted_run_ends(run, tmp_path):
    """A run killed right after checkpoint-4 (its checkpoint folder is all that survives) and resumed must end with
    the weights and metrics of the run that was never interrupted: caption choice, dropout, data order, optimiser
    and schedule all continue exactly."""
    resumed = tmp_path / "run"
    shutil.copytree(run / "checkpoints", resumed / "checkpoints")
    completed = train(
        resumed, "--max_train_steps", "8", "--gradient_accumulation_steps", "2", "--eval_steps", "4", "--resume_from_checkpoint", "latest"
    )
    assert "Resumed from" in completed.stderr and "at step 4" in completed.stderr
    original = load_file(run / "final" / "model.safetensors")
    weights = load_file(resumed / "final" / "model.safetensors")
    assert weights.keys() == original.keys()
    for name, value in original.items():
        torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
    results, expected = (json.loads((folder / "eval_results.json").read_text()) for folder in (resumed, run))
    assert results["metrics"] == pytest.approx(expected["metrics"], abs=1e-4)
    assert [entry["step"] for entry in results["train_history"]] == [2, 4, 4, 6, 8]
    losses = [[entry["loss"] for entry in history["train_history"] if "loss" in entry] for history in (results, expected)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    verify_checkpoint(resumed / "final")


def test_resume_from_an_incomplete_checkpoint_names_the_missing_file(run, tmp_path):
    broken = tmp_path / "checkpoint-4"
    shutil.copytree(run / "checkpoints" / "checkpoint-4", broken)
    (broken / "optimizer.bin").unlink()
    command = [sys.executable, str(REPO_ROOT / "train" / "vlp.py"), "--output_dir", str(tmp_path / "out"), *SMALL_RUN]
    completed = subprocess.run(
        [*command, "--resume_from_checkpoint", str(broken)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert completed.returncode != 0
    assert "not a complete checkpoint (missing optimizer.bin)" in completed.stderr


def test_final_folder_with_missing_weights_is_rejected(run, tmp_path):
    copy = shutil.copytree(run / "final", tmp_path / "final")
    (copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors \(weights\)"):
        verify_checkpoint(copy)


LOAD_SCRIPT = """
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoProcessor

checkpoint, output_path, *texts = sys.argv[1:]
config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
rng = np.random.default_rng(0)
images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), Image.new("RGB", (32, 32), "red")]
with torch.no_grad():
    outputs = model(**processor(text=texts, images=images), return_loss=False)
torch.save(
    {
        "classes": [type(obj).__module__ + "." + type(obj).__name__ for obj in (config, model, processor)],
        "visual_embeds": outputs.visual_embeds,
        "text_embeds": outputs.text_embeds,
    },
    output_path,
)
"""


def test_fresh_process_outside_the_project_reproduces_the_embeddings(run, tmp_path):
    final = run / "final"
    output_path = tmp_path / "outputs.pt"
    run_outside_project(LOAD_SCRIPT, [final, output_path, *CAPTIONS], tmp_path)
    loaded = torch.load(output_path)
    assert [name.rpartition(".")[2] for name in loaded["classes"]] == ["VLPConfig", "VLPModel", "VLPProcessor"]
    assert all(name.startswith("transformers_modules.") for name in loaded["classes"])

    model = VLPModel.from_pretrained(final).eval()
    processor = VLPProcessor.from_pretrained(final)
    with torch.no_grad():
        expected = model(**processor(**probe_inputs()), return_loss=False)
    torch.testing.assert_close(loaded["visual_embeds"], expected.visual_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded["text_embeds"], expected.text_embeds, atol=1e-6, rtol=0)
    assert not torch.allclose(expected.visual_embeds[0], expected.visual_embeds[1])


def test_sign_modality_runs_end_to_end(tmp_path):
    output_dir = tmp_path / "signs"
    train(output_dir, "--modality", "signs", "--max_train_steps", "4", "--max_frames", "48")
    verify_checkpoint(output_dir / "final")
    metrics = json.loads((output_dir / "eval_results.json").read_text())["metrics"]
    assert {"dim128/v2t_R@1", "dim128/t2v_R@1", "dim128/pos_sim", "dim128/neg_sim"} <= metrics.keys()


def test_unknown_modality_is_a_clear_error(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "train" / "vlp.py"), "--output_dir", str(tmp_path), "--modality", "audio"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert completed.returncode != 0
    assert "--modality must be 'images' or 'signs', got 'audio'" in completed.stderr


def test_lora_run_saves_the_adapter_and_a_merged_model(tmp_path):
    output_dir = tmp_path / "lora"
    completed = train(output_dir, "--max_train_steps", "4", "--lora_text_layers", "1", "--lora_vision_layers", "1")
    assert "trainable parameters" in completed.stderr
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted({name.split(".")[0] for name in adapter_config["target_modules"]}) == ["text_model", "vision_model"]
    assert "pooling" in adapter_config["modules_to_save"]
    verify_checkpoint(output_dir / "final")
    merged = VLPModel.from_pretrained(output_dir / "final")
    assert not any("lora" in name for name in merged.state_dict())
