"""`train/rag_captioner.py` end to end on tiny models: the missing retriever is trained first, the loss falls, the
report holds every ablation, the plot is written, and the saved folder reloads with its datastore and captions the
held-out images exactly as the run did."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.synthetic_shapes import make_shapes_splits
from hub import verify_checkpoint
from modeling import RagCaptionerModel
from processing import RagCaptionerProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_EVAL, IMAGE_SIZE = 48, 12, 32
RETRIEVER_ARGS = (
    f"--max_train_steps 2 --eval_steps 0 --checkpointing_steps 0 --image_size {IMAGE_SIZE} --projection_dim 32 "
    "--matryoshka_dims 32,16 --pooling_hidden_size 32 --per_device_train_batch_size 16 --eval_batch_size 12"
)
TINY_RUN = [
    "--num_train", str(NUM_TRAIN), "--num_eval", str(NUM_EVAL), "--decoder_layers", "2", "--decoder_width", "64",
    "--per_device_train_batch_size", "16", "--eval_batch_size", "12", "--learning_rate", "3e-3",
    "--max_train_steps", "30", "--logging_steps", "5", "--eval_steps", "15", "--checkpointing_steps", "15",
    "--num_plot_examples", "4", "--report_to", "none", "--cpu_threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny run whose retriever folder does not exist yet."""
    root = tmp_path_factory.mktemp("rag")
    retriever = root / "vlp" / "final"
    command = [
        sys.executable, str(REPO_ROOT / "train" / "rag_captioner.py"), "--output_dir", str(root / "run"),
        "--retriever_model_name_or_path", str(retriever), "--train_retriever_args", RETRIEVER_ARGS, *TINY_RUN,
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return root, completed


def test_the_missing_retriever_is_trained_first_and_said_so(run):
    root, completed = run
    assert "does not exist: training the VLP retriever first" in completed.stderr
    verify_checkpoint(root / "vlp" / "final")
    assert "Searched the 4 nearest captions of every training image once, before training" in completed.stderr


def test_loss_falls_and_the_report_holds_every_ablation(run):
    root, completed = run
    results = json.loads((root / "run" / "eval_results.json").read_text())
    losses = [entry["loss"] for entry in results["train_history"] if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < 0.75 * losses[0]
    assert {"lm_loss", "alignment_loss", "retriever_lambda", "retrieval_scale"} <= results["train_history"][-1].keys()
    assert [entry["step"] for entry in results["train_history"] if "check/CIDEr" in entry] == [15]
    metrics = results["metrics"]
    for name in ("CIDEr", "BLEU-4", "ROUGE-L", "no_retrieval_CIDEr", "random_retrieval_CIDEr", "oracle_retrieval_CIDEr",
                 "nearest_caption_CIDEr", "retriever_v2t_R@1", "retriever_v2t_R@5"):  # fmt: skip
        assert name in metrics and metrics[name] >= 0, name
    assert len(results["examples"]) == NUM_EVAL and all(len(row["retrieved"]) == 4 for row in results["examples"])
    assert "oracle: the image's own references" in completed.stdout
    assert "On CIDEr-D, the model with its retrieved neighbours" in completed.stdout
    for name in ("no_retrieval", "random_retrieval", "oracle_retrieval"):
        gain = metrics[f"CIDEr_gain_over_{name}"]
        assert gain == pytest.approx(metrics["CIDEr"] - metrics[f"{name}_CIDEr"])
        assert metrics[f"CIDEr_gain_over_{name}_ci_low"] <= gain <= metrics[f"CIDEr_gain_over_{name}_ci_high"]
        assert 0.0 <= metrics[f"captions_identical_to_{name}"] <= 1.0


def test_the_retrieval_examples_plot_and_its_json(run):
    root, _ = run
    plots = root / "run" / "plots"
    assert (plots / "retrieval_examples.png").stat().st_size > 10_000
    entries = json.loads((plots / "retrieval_examples.json").read_text())
    assert len(entries) == 4
    assert all(len(entry["retrieved"]) == 4 and entry["generated"] is not None and entry["references"] for entry in entries)
    scores = [item["score"] for item in entries[0]["retrieved"]]
    assert scores == sorted(scores, reverse=True)


def test_the_saved_folder_reloads_with_its_datastore_and_captions_as_the_run_did(run):
    root, _ = run
    final = root / "run" / "final"
    verify_checkpoint(final)
    card = (final / "README.md").read_text()
    assert "model-index" in card and "oracle_retrieval_CIDEr" in card
    model = RagCaptionerModel.from_pretrained(final).eval()
    processor = RagCaptionerProcessor.from_pretrained(final, trust_remote_code=False)  # the project's own class
    assert len(model.retriever) == NUM_TRAIN * 5 and model.config.num_retrieved == 4
    images = make_shapes_splits(NUM_TRAIN, NUM_EVAL, seed=1234, image_size=IMAGE_SIZE)["validation"]
    captions = processor.batch_decode(model.generate(pixel_values=processor(images=list(images["image"]))["pixel_values"]))
    examples = json.loads((root / "run" / "eval_results.json").read_text())["examples"]
    assert captions == [row["retrieval"] for row in examples]
