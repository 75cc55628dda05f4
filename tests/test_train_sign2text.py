"""`train/sign2text.py` end to end on a tiny model: report, checkpoint, phase-1 initialisation, decoder LoRA."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoConfig

from conftest import tiny_vlp_config
from configuration import SequenceEncoderConfig
from data.synthetic_signs import EVAL_SPLITS
from hub import verify_checkpoint
from modeling import Sign2TextModel, VLPModel
from processing import Sign2TextProcessor
from train.backbones import offline_model_dir
from train.sign2text import DataArguments
from train.sign_data import load_sign_splits

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "--sequence_hidden_size", "32", "--sequence_layers", "1", "--decoder_layers", "2", "--sequence_attention_heads", "2",
    "--projection_dim", "16", "--max_frames", "48", "--num_train", "48", "--num_eval", "4",
    "--per_device_train_batch_size", "8", "--eval_batch_size", "12", "--report_to", "none", "--logging_steps", "2",
    "--cpu_threads", "1",
]  # fmt: skip


def launch(output_dir: Path, *arguments: str, num_processes: int = 1) -> subprocess.CompletedProcess:
    """`train/sign2text.py` in one process, or under `accelerate launch` with CPU data parallelism."""
    script = [str(REPO_ROOT / "train" / "sign2text.py"), "--output_dir", str(output_dir), *TINY_RUN, *arguments]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if num_processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
                   "--main_process_port", str(free_port()), *script]  # fmt: skip
        env |= {"ACCELERATE_USE_CPU": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RUN = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--eval_steps", "2", "--logging_steps", "1", "--memory_size", "16",
       "--ctc_weight", "0.5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Four steps with a SupCon memory queue and the CTC head, a checkpoint and a collapse check at step 2, the loss
    logged every step."""
    output_dir = tmp_path_factory.mktemp("sign2text") / "run"
    return output_dir, launch(output_dir, *RUN)


def test_run_reports_generation_baseline_and_retrieval(run):
    output_dir, completed = run
    verify_checkpoint(output_dir / "final")
    assert (output_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    results = json.loads((output_dir / "eval_results.json").read_text())
    metrics = results["metrics"]
    for split in EVAL_SPLITS:  # 4 clips each: seen sentences, unseen sentences, unseen signers
        for name in ("WER", "BLEU-4", "ROUGE-L", "text_only_WER", "text_only_BLEU-4"):
            assert f"{split}_{name}" in metrics
        assert metrics[f"{split}_num_sentences"] == 4
    for name in ("v2t_R@1", "t2v_R@1", "pos_sim", "neg_sim"):
        assert name in metrics
    assert [split for _, _, split in results["examples"]] == [split for split in EVAL_SPLITS for _ in range(4)]
    assert {"generation_loss", "clip_loss", "supcon_loss", "ctc_loss"} <= results["train_history"][-1].keys()
    # clips longer than --max_frames 48 are reported once, with a count, never one warning per clip
    assert completed.stderr.count("were longer than --max_frames 48") == 1
    assert "frames > max_frames" not in completed.stderr and "more frames than max_frames" not in completed.stderr
    checks = [entry for entry in results["train_history"] if "check/margin" in entry]
    assert [entry["step"] for entry in checks] == [2]  # the final evaluation replaces the check at the last step
    assert 0 < checks[0]["check/distinct_output_share"] <= 1
    assert "Collapse check at step 2" in completed.stderr
    assert "sacreBLEU signature: `nrefs:1|case:lc" in completed.stdout
    card = ModelCard.load(output_dir / "final" / "README.md")
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert reported["WER"] == pytest.approx(metrics["unseen_sentences_WER"])  # the headline: unseen sentences
    assert "Text-only baseline" in card.text and "unseen signers" in card.text


def test_resume_restores_augmentation_and_the_memory_queue(run, tmp_path):
    """Killed right after checkpoint-2 and resumed, the run ends with the uninterrupted run's weights and metrics:
    the per-sample augmentation and the SupCon queue (training state outside the model) continue exactly."""
    output_dir, _ = run
    shutil.copytree(output_dir / "checkpoints", tmp_path / "resumed" / "checkpoints")
    launch(tmp_path / "resumed", *RUN, "--resume_from_checkpoint", "latest")
    original, resumed = (load_file(folder / "final" / "model.safetensors") for folder in (output_dir, tmp_path / "resumed"))
    for name, value in original.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
    expected, results = (json.loads((folder / "eval_results.json").read_text()) for folder in (output_dir, tmp_path / "resumed"))
    assert results["metrics"] == pytest.approx(expected["metrics"], abs=1e-4)
    assert results["examples"] == expected["examples"]


def test_two_processes_keep_the_schedule_and_pair_every_generation_with_its_reference(run, tmp_path):
    """Under two processes the learning rate at every step equals the one-process run's (the schedule counts
    optimiser steps, not processes), and the sharded generations come back each with its own reference: a fresh
    one-process generation from the saved model reproduces them in the same order."""
    one_process, _ = run
    launch(tmp_path / "two", *RUN, num_processes=2)
    histories = [json.loads((folder / "eval_results.json").read_text()) for folder in (one_process, tmp_path / "two")]
    learning_rates = [[(entry["step"], entry["lr"]) for entry in h["train_history"] if "lr" in entry] for h in histories]
    assert [step for step, _ in learning_rates[1]] == [1, 2, 3, 4]
    assert learning_rates[1] == pytest.approx(learning_rates[0])

    model = Sign2TextModel.from_pretrained(tmp_path / "two" / "final").eval()
    processor = Sign2TextProcessor.from_pretrained(tmp_path / "two" / "final")
    _, clips = load_sign_splits(DataArguments(num_train=48, num_eval=4))  # the run's data seed and occlusions
    inputs = processor(keypoints=clips["keypoints"], frame_features=clips["features"])
    with torch.no_grad():
        predictions = processor.batch_decode(model.generate(**inputs, num_beams=1, do_sample=False))
    assert histories[1]["examples"] == [list(row) for row in zip(clips["sentence"], predictions, clips["split"])]


def test_phase_one_vlp_checkpoint_initialises_the_encoder(tmp_path):
    sequence = SequenceEncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_frames=48)
    vlp = VLPModel(tiny_vlp_config(vision_config=None, sequence_config=sequence, text_config=AutoConfig.from_pretrained(offline_model_dir())))
    vlp.save_pretrained(tmp_path / "vlp")
    # with a zero learning rate the trained model keeps exactly what it was initialised with
    completed = launch(
        tmp_path / "run", "--max_train_steps", "1", "--learning_rate", "0", "--init_encoder_from", str(tmp_path / "vlp"),
        "--sequence_layers", "2",
    )  # fmt: skip
    # the tower comes whole from the checkpoint; the log names the flag it overrides, nothing is replaced silently
    assert "--sequence_layers 2 → 1" in completed.stderr
    model = Sign2TextModel.from_pretrained(tmp_path / "run" / "final")
    for ours, theirs in ((model.encoder.sequence_encoder, vlp.sequence_encoder), (model.text_model, vlp.text_model)):
        for (name, value), expected in zip(ours.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(value, expected, msg=name)


def test_decoder_lora_from_a_chosen_layer(tmp_path):
    launch(tmp_path / "run", "--max_train_steps", "2", "--lora_decoder_from_layer", "1")
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] and all(name.startswith("decoder.layers.1.") for name in adapter["target_modules"])
    weights = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert weights and all(".layers.1." in name and "lora_" in name for name in weights)
    verify_checkpoint(tmp_path / "run" / "final")
    merged = Sign2TextModel.from_pretrained(tmp_path / "run" / "final")
    assert not any("lora" in name for name in merged.state_dict())


def write_keypoint_table(folder: Path, name: str, sentences: list[str], num_keypoints=5, keypoint_dim=3) -> Path:
    """A table of real-data layout (here 5 keypoints in 3-D, no frame features) with one `.npy` per clip."""
    rng = np.random.default_rng(len(name))
    (folder / "keypoints").mkdir(parents=True, exist_ok=True)
    rows = ["id\tsentence"]
    for index, sentence in enumerate(sentences):
        clip_id = f"{name}{index}"
        np.save(folder / "keypoints" / f"{clip_id}.npy", rng.standard_normal((20 + index, num_keypoints, keypoint_dim)).astype(np.float32))
        rows.append(f"{clip_id}\t{sentence}")
    table = folder / f"{name}.tsv"
    table.write_text("\n".join(rows) + "\n")
    return table


def test_keypoint_table_of_another_layout_trains_and_names_missing_features(tmp_path):
    sentences = ["hello how are you", "thank you very much", "see you tomorrow", "good morning"] * 4
    data = [
        "--dataset", "keypoint_table", "--keypoint_dir", str(tmp_path / "data" / "keypoints"),
        "--train_table", str(write_keypoint_table(tmp_path / "data", "train", sentences)),
        "--eval_table", str(write_keypoint_table(tmp_path / "data", "eval", sentences[:4])),
    ]  # fmt: skip
    launch(tmp_path / "run", *data, "--use_visual_features", "false", "--max_train_steps", "2", "--eval_batch_size", "4")
    config = Sign2TextModel.from_pretrained(tmp_path / "run" / "final").config.sequence_config
    assert (config.num_keypoints, config.keypoint_dim) == (5, 3)

    command = [sys.executable, str(REPO_ROOT / "train" / "sign2text.py"), "--output_dir", str(tmp_path / "no"), *TINY_RUN, *data]
    completed = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}, cwd=REPO_ROOT)
    assert completed.returncode != 0
    assert "no per-frame visual features" in completed.stderr and "--use_visual_features false" in completed.stderr
