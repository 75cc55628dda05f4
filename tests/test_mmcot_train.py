"""`train/mmcot.py` end to end on a tiny run: a local T5 folder through --model_name_or_path, decoder LoRA from layer 1,
every metric of the report, the adapter and the merged final model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import T5Config, T5ForConditionalGeneration

from data.synthetic_scienceqa import make_scienceqa_problems
from hub import verify_checkpoint
from processing.processing_mmcot import format_prompt, format_target
from processing.tokenization_mmcot import train_unigram_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "--num_train", "48", "--num_val", "8", "--num_test", "16", "--max_train_steps", "3", "--per_device_train_batch_size", "8",
    "--eval_steps", "2", "--checkpointing_steps", "0", "--logging_steps", "1", "--eval_batch_size", "16",
    "--image_size", "32", "--vision_hidden_size", "32", "--vision_layers", "1", "--report_to", "none", "--cpu_threads", "1",
]  # fmt: skip
REPORTED = (
    "accuracy", "direct_accuracy", "text_only_accuracy", "shuffled_vision_accuracy", "gold_rationale_accuracy", "unparsed",
    "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "rationale_ROUGE-L", "gate_mean_image", "gate_mean_no_image",
)  # fmt: skip


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    """A tiny T5 and its tokenizer saved as a Hub checkpoint would be (what google/flan-t5-base provides)."""
    folder = tmp_path_factory.mktemp("t5")
    problems, _, _ = make_scienceqa_problems({"train": 200}, seed=5, image_size=16)
    texts = [format_prompt(p, "answer", format_target(p, "rationale")) for p in problems.values()]
    tokenizer = train_unigram_tokenizer(texts + [format_target(p, "answer") for p in problems.values()], vocab_size=300)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0,
    )  # fmt: skip
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, t5_folder) -> tuple[Path, subprocess.CompletedProcess]:
    output_dir = tmp_path_factory.mktemp("mmcot") / "run"
    arguments = ["--output_dir", str(output_dir), *TINY_RUN, "--model_name_or_path", str(t5_folder), "--lora_decoder_from_layer", "1"]
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train" / "mmcot.py"), *arguments],
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output_dir, completed


def test_report_holds_every_metric_and_the_category_table(lora_run):
    output_dir, completed = lora_run
    results = json.loads((output_dir / "eval_results.json").read_text())
    metrics = results["metrics"]
    assert set(REPORTED) <= metrics.keys()
    assert metrics["num_examples"] == 16
    for prefix in ("direct_", "text_only_", "shuffled_vision_", "gold_rationale_"):
        assert 0 <= metrics[f"{prefix}accuracy"] <= 100 and metrics[f"{prefix}unparsed"] >= 0
    assert 0 < metrics["gate_mean_image"] < 1 and 0 < metrics["gate_mean_no_image"] < 1
    assert metrics["rationale_gain"] == pytest.approx(metrics["accuracy"] - metrics["direct_accuracy"])
    assert metrics["vision_gain_IMG"] == pytest.approx(metrics["IMG"] - metrics["text_only_IMG"])
    assert metrics["vision_gain_over_shuffled_IMG"] == pytest.approx(metrics["IMG"] - metrics["shuffled_vision_IMG"])
    for name in ("rationale_gain", "vision_gain_IMG", "vision_gain_over_shuffled_IMG"):
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"], name
    assert "- Rationale (two-stage − direct, all problems): " in completed.stdout
    assert [entry["step"] for entry in results["train_history"] if "check/accuracy" in entry] == [2]
    assert "| answered | NAT (" in completed.stdout and "gold rationale → answer" in completed.stdout
    card = ModelCard.load(output_dir / "final" / "README.md")
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert reported["accuracy"] == pytest.approx(metrics["accuracy"])
    assert "| answered | NAT (" in card.text


def test_lora_run_saves_the_adapter_and_a_merged_model_that_changed_only_decoder_layers_from_one(lora_run, t5_folder):
    output_dir, _ = lora_run
    assert (output_dir / "adapter" / "adapter_config.json").is_file()
    verify_checkpoint(output_dir / "final")
    merged = load_file(output_dir / "final" / "model.safetensors")
    assert not any("lora" in name for name in merged)
    original = load_file(t5_folder / "model.safetensors")
    changed = {name for name, value in original.items() if not value.equal(merged[f"language_model.{name}"])}
    assert changed and all(name.startswith("decoder.block.1.") for name in changed)
    assert any(name.startswith("fusion.gate.") for name in merged) and any(name.startswith("vision_tower.") for name in merged)


def test_task_trains_on_a_scienceqa_folder_with_precomputed_features(tmp_path):
    """`--dataset scienceqa --features_dir`: the real release layout, one (tokens, width) array per problem with an
    image; the model reads features of that width, problems without an image get a masked empty input."""
    import numpy as np

    from train.arguments import parse_arguments
    from train.mmcot import MMCoTTask

    problems, pid_splits, images = make_scienceqa_problems({"train": 24, "val": 4, "test": 4}, seed=2, image_size=16)
    data_dir, features_dir = tmp_path / "scienceqa", tmp_path / "features"
    features_dir.mkdir()
    data_dir.mkdir()
    (data_dir / "problems.json").write_text(json.dumps(problems))
    (data_dir / "pid_splits.json").write_text(json.dumps(pid_splits))
    for pid, image in images.items():
        (data_dir / "images" / problems[pid]["split"] / pid).mkdir(parents=True)
        image.save(data_dir / "images" / problems[pid]["split"] / pid / "image.png")
        np.save(features_dir / f"{pid}.npy", np.random.default_rng(int(pid)).normal(size=(5, 12)).astype(np.float32))
    argv = ["--dataset", "scienceqa", "--data_dir", str(data_dir), "--features_dir", str(features_dir), "--vocab_size", "300"]
    task = MMCoTTask(*parse_arguments(*MMCoTTask.argument_groups, argv=argv))
    train_set, eval_set = task.load_splits()
    assert (len(train_set), len(eval_set)) == (24, 4) and "image" not in train_set.column_names
    model = task.build_model(train_set)
    assert model.vision_tower is None and model.config.vision_feature_dim == 12
    task.processor = task.build_processor(model)
    rows = [train_set[index] for index in range(8)]
    batch = task.collate(rows, [np.random.default_rng(index) for index in range(8)])
    has_image = [problems[row["pid"]]["image"] is not None for row in rows]
    assert batch["image_mask"].tolist() == [int(flag) for flag in has_image] and any(has_image)
    assert batch["vision_features"].shape == (8, 5, 12)
    model(**batch).loss.backward()
    assert model.fusion.vision_projection.weight.grad.abs().sum() > 0

    np.save(features_dir / f"{next(iter(images))}.npy", np.zeros((5, 13), dtype=np.float32))
    with pytest.raises(ValueError, match=r"have shape \(5, 13\); expected \(5, 12\)|have shape \(5, 12\); expected \(5, 13\)"):
        task.load_splits()
    with pytest.raises(ValueError, match="pass one"):
        MMCoTTask(*parse_arguments(*MMCoTTask.argument_groups, argv=[*argv, "--vision_model_name_or_path", "x"]))
