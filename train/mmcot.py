"""Train the Multimodal-CoT T5 on ScienceQA (or its embedded stand-in): rationale, then answer, from one model.

    accelerate launch train/mmcot.py                                   # embedded set, tiny T5 + vision tower from scratch
    accelerate launch train/mmcot.py --dataset scienceqa --data_dir DIR --model_name_or_path google/flan-t5-base \\
        --features_file DIR/vision_features/detr.npy                   # the original's setting (Hub reachable)
    accelerate launch train/mmcot.py --dataset scienceqa --data_dir DIR --model_name_or_path google/flan-t5-base \\
        --vision_model_name_or_path openai/clip-vit-base-patch32       # pixels through a frozen CLIP vision tower

One model learns three prompts (see `processing.processing_mmcot`): QCM → rationale, QCM + rationale → answer
(trained on the gold rationale), and QCM → answer (the direct baseline). Every micro-batch draws one of them from
a seeded generator, with the weights `--stage_weights`. The held-out report answers every test problem
five ways: two-stage with the generated rationale (`accuracy`), direct, two-stage with the vision removed, with
another problem's vision, and from the gold rationale; per ScienceQA category, with unparsed answers counted.
"""

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoTokenizer

from configuration import MMCoTConfig
from configuration.configuration_mmcot import TINY_T5_DEFAULTS, VISION_FEATURE_SHAPES
from data.scienceqa import load_scienceqa, load_vision_features
from data.synthetic_scienceqa import write_synthetic_scienceqa
from modeling import MMCoTForConditionalGeneration
from hub import pipeline_card_fields
from processing import MMCoTProcessor
from processing.pipeline_mmcot import MMCoTPipeline
from processing.processing_mmcot import STAGES, format_prompt, format_target
from processing.tokenization_mmcot import train_unigram_tokenizer
from train.arguments import DatasetNameArguments, DecoderLoraArguments, TrainingArguments
from train.backbones import load_image_processor, tiny_vision_config
from train.evaluation import load_metric, map_sharded, paired_difference
from train.lora import apply_lora
from train.runner import EvaluationReport, Task, run

logger = logging.getLogger(__name__)

CHECK_SAMPLE_SIZE = 64
CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
# The five ways the held-out problems are answered: (metric prefix, stage-2 source, vision).
VARIANTS = {
    "": ("generated", "own"),
    "direct_": ("direct", "own"),
    "text_only_": ("generated", "none"),
    "shuffled_vision_": ("generated", "shuffled"),
    "gold_rationale_": ("gold", "own"),
}
# Paired accuracy differences the report gives (`train.evaluation.paired_difference`), in percentage points.
EFFECT_NAMES = {
    "rationale_gain": "Rationale (two-stage − direct, all problems)",
    "vision_gain_IMG": "Vision on image problems (own image − vision removed)",
    "vision_gain_over_shuffled_IMG": "Vision on image problems (own image − another problem's)",
}
VARIANT_NAMES = {
    "": "two-stage (generated rationale)",
    "direct_": "direct (QCM → A, no rationale)",
    "text_only_": "two-stage, vision removed",
    "shuffled_vision_": "two-stage, another problem's vision",
    "gold_rationale_": "gold rationale → answer (upper bound)",
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A T5 checkpoint (Hub id or folder, e.g. google/flan-t5-base): its weights and tokenizer. Default: "
            "a tiny T5 trained from scratch with a Unigram tokenizer trained on the training text (offline)."
        },
    )
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A transformers vision backbone (e.g. openai/clip-vit-base-patch32), frozen; its patch states are "
            "the vision tokens. Default (without features): a tiny CLIP vision tower built from a config and trained."
        },
    )
    vocab_size: int = field(default=1024, metadata={"help": "Offline tokenizer: at most this many Unigram pieces."})
    text_hidden_size: int = field(default=128, metadata={"help": "T5 from scratch: width d_model (d_ff is 4×, heads of 32)."})
    text_layers: int = field(default=2, metadata={"help": "T5 from scratch: encoder layers, and as many decoder layers."})
    image_size: int = field(default=48, metadata={"help": "Tiny vision tower: input resolution."})
    patch_size: int = field(default=16, metadata={"help": "Tiny vision tower: patch size (48/16: one patch per scene cell)."})
    vision_hidden_size: int = field(default=128, metadata={"help": "Tiny vision tower: width."})
    vision_layers: int = field(default=2, metadata={"help": "Tiny vision tower: layers."})
    stage_weights: str = field(
        default="2,2,1",
        metadata={"help": "Relative shares of the rationale, answer and direct prompts among training micro-batches."},
    )
    num_beams: int = field(default=1, metadata={"help": "Beam size of both stages in the held-out evaluation (1: greedy)."})

    def __post_init__(self):
        weights = [float(weight) for weight in self.stage_weights.split(",")]
        if len(weights) != len(STAGES) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"--stage_weights must be {len(STAGES)} non-negative numbers (rationale, answer, direct) with a positive "
                f"sum, got {self.stage_weights!r}."
            )
        self.stage_probabilities = np.array(weights) / sum(weights)


@dataclass
class DataArguments(DatasetNameArguments):
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' (embedded, generated from data_seed) or 'scienceqa'."})
    data_dir: str | None = field(
        default=None, metadata={"help": "scienceqa: folder with problems.json, pid_splits.json and images/<split>/<pid>/."}
    )
    train_split: str = field(default="train", metadata={"help": "Split trained on."})
    check_split: str = field(default="val", metadata={"help": "Split of the periodic checks (its first 64 problems)."})
    eval_split: str = field(default="test", metadata={"help": "Split of the final report (ScienceQA reports test)."})
    features_dir: str | None = field(
        default=None, metadata={"help": "Precomputed vision features: a folder of <pid>.npy arrays (tokens, width)."}
    )
    features_file: str | None = field(
        default=None,
        metadata={"help": "Precomputed vision features as Multimodal-CoT ships them: an .npy array (problems, tokens, width) with name_map.json beside it."},
    )
    features_type: str | None = field(
        default=None, metadata={"help": "Check the features' shape: 'detr' (100, 256), 'clip' (49, 2048) or 'vit' (145, 1024)."}
    )
    num_train: int = field(default=20000, metadata={"help": "synthetic: training problems (generated in ~30 s)."})
    num_val: int = field(default=200, metadata={"help": "synthetic: validation problems."})
    num_test: int = field(default=800, metadata={"help": "synthetic: test problems."})
    data_seed: int = field(default=1234, metadata={"help": "synthetic: generator seed."})

    def __post_init__(self):
        super().__post_init__()
        if self.dataset not in ("synthetic", "scienceqa"):
            raise ValueError(f"--dataset must be 'synthetic' or 'scienceqa', got {self.dataset!r}.")
        if self.dataset == "scienceqa" and not self.data_dir:
            raise ValueError("--dataset scienceqa needs --data_dir, the folder holding problems.json and pid_splits.json.")
        if self.features_dir and self.features_file:
            raise ValueError("Pass --features_dir or --features_file, not both.")
        if self.features_type is not None and self.features_type not in VISION_FEATURE_SHAPES:
            raise ValueError(f"--features_type must be one of {sorted(VISION_FEATURE_SHAPES)}, got {self.features_type!r}.")

    @property
    def features_source(self) -> str | None:
        return self.features_dir or self.features_file


@dataclass
class MMCoTTrainingArguments(TrainingArguments):
    """The shared training arguments with defaults for the embedded run on two CPU cores."""

    output_dir: str = field(default="outputs/mmcot", metadata={"help": "Where checkpoints, logs and the final model go."})
    max_train_steps: int = field(default=3000, metadata={"help": "Optimiser steps to train for."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Problems per micro-batch per process."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not applied to biases and norms)."})
    checkpointing_steps: int = field(default=1000, metadata={"help": "Save a resumable checkpoint every N steps; 0 disables."})
    eval_steps: int = field(default=500, metadata={"help": "Two-stage accuracy on 64 validation problems every N steps; 0: only at the end."})
    eval_batch_size: int = field(default=200, metadata={"help": "Problems per generation batch in the evaluation."})
    cpu_threads: int = field(
        default=1,
        metadata={
            "help": "Intra-op threads per process on CPU (0: the cores shared between processes). The matrices of the "
            "tiny default are small: two threads gain little on an idle machine and lose several times over on a busy one."
        },
    )


def problem_flags(problems) -> dict[str, list]:
    """What the accuracy module groups by, read without decoding any image."""
    images = problems.data.column("image").to_pylist()
    return {
        "subjects": problems["subject"],
        "has_context": [bool(hint.strip()) for hint in problems["hint"]],
        "has_image": [image is not None for image in images],
        "grades": problems["grade"],
    }


def shuffled_vision_donors(has_image: list[bool], seed: int) -> list[int]:
    """For every problem with an image, another problem's image (a derangement of the image problems); problems
    without one keep theirs (none)."""
    owners = [index for index, flag in enumerate(has_image) if flag]
    donors = list(range(len(has_image)))
    if len(owners) < 2:
        return donors
    order = np.random.default_rng(seed).permutation(owners)
    for position, owner in enumerate(order):
        donors[owner] = int(order[(position + 1) % len(order)])  # a cycle: nobody keeps their own image
    return donors


class MMCoTTask(Task):
    name = "mmcot"
    argument_groups = (ModelArguments, DecoderLoraArguments, DataArguments, MMCoTTrainingArguments)

    def __init__(self, model_args, lora_args, data_args, training_args):
        super().__init__(model_args, lora_args, data_args, training_args)
        self.model_args, self.lora_args, self.data_args = model_args, lora_args, data_args
        self.features: dict[str, np.ndarray] | None = None
        if data_args.features_source and model_args.vision_model_name_or_path:
            raise ValueError(
                "--vision_model_name_or_path reads pixels, --features_dir/--features_file precomputed features; pass one."
            )

    # -- data -------------------------------------------------------------------------------------------------------
    def load_splits(self):
        args = self.data_args
        if args.dataset == "synthetic":
            # Every process writes the same seeded files to its own folder: nothing to share or wait for.
            self._data_folder = tempfile.TemporaryDirectory(prefix="mmcot-scienceqa-")
            data_dir = write_synthetic_scienceqa(
                self._data_folder.name, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test, seed=args.data_seed
            )
        else:
            data_dir = args.data_dir
        splits = load_scienceqa(data_dir, list(dict.fromkeys([args.train_split, args.check_split, args.eval_split])))
        self.eval_flags = problem_flags(splits[args.eval_split])
        if args.features_source:
            expected = VISION_FEATURE_SHAPES[args.features_type] if args.features_type else None
            self.features = {}
            for split in splits.values():
                self.features |= load_vision_features(args.features_source, split, expected)
            splits = {name: split.remove_columns("image") for name, split in splits.items()}  # the features replace it
        check_set = splits[args.check_split]
        self.check_rows = [check_set[index] for index in range(min(CHECK_SAMPLE_SIZE, len(check_set)))]
        return splits[args.train_split], splits[args.eval_split]

    def problem(self, row: dict) -> dict:
        """A loader row as the processor reads it: with its precomputed features when the run uses them."""
        if self.features is None:
            return row
        return {**row, "vision_features": self.features.get(row["pid"])}

    # -- model ------------------------------------------------------------------------------------------------------
    def build_model(self, train_set) -> MMCoTForConditionalGeneration:
        args = self.model_args
        rationales = [format_target(row, "rationale") for row in train_set.select_columns(["lecture", "solution"])]
        if args.model_name_or_path:
            self.tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        else:
            texts = train_set.select_columns(["question", "hint", "choices", "answer", "lecture", "solution"])
            self.tokenizer = train_unigram_tokenizer(
                [format_prompt(row, "answer", rationale) for row, rationale in zip(texts, rationales)]
                + [format_target(row, "answer") for row in texts],
                vocab_size=args.vocab_size,
            )
        longest_rationale = max(len(ids) for ids in self.tokenizer(rationales)["input_ids"])
        config_kwargs = dict(max_rationale_tokens=min(512, longest_rationale + 16))
        if self.features is not None:
            widths = {array.shape[1] for array in self.features.values()}
            config_kwargs["vision_feature_dim"] = widths.pop()
        elif args.vision_model_name_or_path:
            config_kwargs["freeze_vision_tower"] = True
        else:
            config_kwargs["vision_config"] = tiny_vision_config(
                image_size=args.image_size, patch_size=args.patch_size, hidden_size=args.vision_hidden_size, num_layers=args.vision_layers
            )
        if args.model_name_or_path:
            model = MMCoTForConditionalGeneration.from_pretrained_backbones(
                args.model_name_or_path, None if self.features is not None else args.vision_model_name_or_path, **config_kwargs
            )
        else:
            special = {"vocab_size": len(self.tokenizer), "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
            size = {
                "d_model": args.text_hidden_size,
                "d_ff": 4 * args.text_hidden_size,
                "num_heads": max(1, args.text_hidden_size // TINY_T5_DEFAULTS["d_kv"]),
                "num_layers": args.text_layers,
                "num_decoder_layers": args.text_layers,
            }
            text_config = {**TINY_T5_DEFAULTS, **size, **special}
            model = MMCoTForConditionalGeneration.from_pretrained_backbones(
                None,
                None if self.features is not None else args.vision_model_name_or_path,
                text_config=text_config,
                **config_kwargs,
            )
        if self.lora_args.lora_decoder_from_layer >= 0:
            # The fusion is new and a tower trained from scratch has nothing to adapt: both train in full.
            trainable = ["fusion"] + (["vision_tower"] if model.vision_tower is not None and not model.config.freeze_vision_tower else [])
            rank = self.lora_args.lora_rank
            model = apply_lora(
                model, {}, first_layer={"language_model.decoder": self.lora_args.lora_decoder_from_layer}, r=rank, alpha=2 * rank,
                modules_to_save=trainable,
            )  # fmt: skip
        return model

    def build_processor(self, model) -> MMCoTProcessor:
        config = model.config
        if config.vision_config is None:
            image_processor = load_image_processor(None, self.model_args.image_size)  # required by the saved form; unused
        elif self.model_args.vision_model_name_or_path:
            image_processor = AutoImageProcessor.from_pretrained(self.model_args.vision_model_name_or_path)
        else:
            image_processor = load_image_processor(None, self.model_args.image_size)
        self.model_config = config
        return MMCoTProcessor(
            image_processor=image_processor,
            tokenizer=self.tokenizer,
            vision_feature_dim=config.vision_feature_dim if config.vision_config is None else None,
        )

    # -- training ---------------------------------------------------------------------------------------------------
    def collate(self, examples, rngs) -> dict:
        """A micro-batch at one stage, drawn by its first problem's generator; stage 2 reads the gold rationale.
        One stage per batch, not per problem: answer prompts are twice as long as the others and rationale targets
        ten times, so a mixed batch would pad every problem to both."""
        stage = STAGES[rngs[0].choice(len(STAGES), p=self.model_args.stage_probabilities)]
        rationales = [format_target(row, "rationale") for row in examples] if stage == "answer" else None
        batch = self.processor([self.problem(row) for row in examples], stage=stage, rationales=rationales, return_labels=True)
        return dict(batch)

    # -- evaluation -------------------------------------------------------------------------------------------------
    def _answer(self, model, problems: list[dict], source: str) -> list[dict]:
        """Stage 2 from the generated rationale (stage 1 first), the gold one, or none (direct), for a batch."""
        rationales = [format_target(problem, "rationale") for problem in problems] if source == "gold" else None
        predictions = model.solve(
            self.processor, problems, rationales=rationales, direct=source == "direct", num_beams=self.model_args.num_beams
        )
        return [{"choice_index": p.choice_index, "rationale": p.rationale, "answer_text": p.answer_text} for p in predictions]

    def _with_vision(self, rows: list[dict], vision: str, donor_rows: list[dict] | None = None) -> list[dict]:
        """The problems with their own vision, none, or that of `donor_rows` (one per problem)."""
        problems = [self.problem(row) for row in rows]
        if vision == "own":
            return problems
        key = "vision_features" if self.features is not None else "image"
        if vision == "none":
            return [{**problem, key: None} for problem in problems]
        return [{**problem, key: self.problem(donor)[key]} for problem, donor in zip(problems, donor_rows)]

    def periodic_check(self, model, step: int) -> dict[str, float]:
        """Two-stage and gold-rationale accuracy on the first validation problems."""
        problems = [self.problem(row) for row in self.check_rows]
        checks = {}
        for name, source in (("accuracy", "generated"), ("gold_rationale_accuracy", "gold")):
            answers = self._answer(model, problems, source)
            correct = [answer["choice_index"] == row["answer"] for answer, row in zip(answers, self.check_rows)]
            checks[name] = 100.0 * float(np.mean(correct))
        logger.info("Check at step %d on %d validation problems: %s", step, len(problems), checks)
        return checks

    def _mean_gates(self, model, rows: list[dict]) -> list[float]:
        """Mean gate λ over each problem's stage-1 prompt tokens and channels."""
        inputs = self.processor([self.problem(row) for row in rows], stage="rationale").to(self.accelerator.device)
        gate = model.encode(**inputs).gate
        mask = inputs["attention_mask"][:, :, None].to(gate.dtype)
        return ((gate * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) * gate.shape[-1])).tolist()

    def evaluate(self, model, eval_set) -> EvaluationReport | None:
        rows = eval_set  # a Dataset: map_sharded reads the rows each process needs
        batch_size = self.training_args.eval_batch_size
        donors = shuffled_vision_donors(self.eval_flags["has_image"], self.training_args.seed)
        indices = list(range(len(rows)))  # map_sharded hands out row numbers; each batch reads its rows
        outputs = {}
        for prefix, (source, vision) in VARIANTS.items():

            def answer(batch: list[int], source=source, vision=vision) -> list[dict]:
                donor_rows = [rows[donors[i]] for i in batch] if vision == "shuffled" else None
                problems = self._with_vision([rows[i] for i in batch], vision, donor_rows)
                return self._answer(model, problems, source)

            outputs[prefix] = map_sharded(self.accelerator, indices, answer, batch_size)
            logger.info("Evaluated: %s", VARIANT_NAMES[prefix])
        gates = map_sharded(self.accelerator, indices, lambda batch: self._mean_gates(model, [rows[i] for i in batch]), batch_size)
        if not self.accelerator.is_main_process:
            return None

        references = rows["answer"]
        metric = load_metric("scienceqa_accuracy")
        metrics, results, predictions = {}, {}, {}
        for prefix, answers in outputs.items():
            predictions[prefix] = [-1 if answer["choice_index"] is None else answer["choice_index"] for answer in answers]
            results[prefix] = metric.compute(predictions=predictions[prefix], references=references, **self.eval_flags)
            metrics[f"{prefix}accuracy"] = results[prefix]["accuracy"]
            metrics[f"{prefix}unparsed"] = results[prefix]["unparsed"]
            for category in CATEGORIES:
                metrics[f"{prefix}{category}"] = results[prefix][category]
        gold = [format_target(row, "rationale") for row in rows.select_columns(["lecture", "solution"])]
        generated = [answer["rationale"] for answer in outputs[""]]
        rouge = load_metric("rouge").compute(predictions=generated, references=gold)
        metrics["rationale_ROUGE-L"] = 100.0 * rouge["rougeL"]
        has_image = np.array(self.eval_flags["has_image"])
        # What the rationale and the picture are worth, per problem: accuracy differences with bootstrap intervals.
        correct = {prefix: 100.0 * (np.array(chosen) == np.array(references)) for prefix, chosen in predictions.items()}
        effects = {"rationale_gain": paired_difference(correct[""], correct["direct_"])}
        if has_image.sum() >= 2:
            effects["vision_gain_IMG"] = paired_difference(correct[""][has_image], correct["text_only_"][has_image])
            effects["vision_gain_over_shuffled_IMG"] = paired_difference(correct[""][has_image], correct["shuffled_vision_"][has_image])
        for name, effect in effects.items():
            metrics |= {name: effect.mean, f"{name}_ci_low": effect.low, f"{name}_ci_high": effect.high}
        gates = np.array(gates)
        metrics["gate_mean_image"] = float(gates[has_image].mean()) if has_image.any() else None
        metrics["gate_mean_no_image"] = float(gates[~has_image].mean()) if (~has_image).any() else None
        metrics["num_examples"] = len(references)
        return EvaluationReport(
            metrics=metrics,
            headline={name: metrics[name] for name in ("accuracy", "direct_accuracy", "text_only_IMG", "IMG", "rationale_ROUGE-L")},
            tables=self._tables(results, metrics, effects, rows, outputs),
            examples=[
                {"pid": row_pid, "rationale": answer["rationale"], "answer": answer["answer_text"], "gold": gold_rationale}
                for row_pid, answer, gold_rationale in list(zip(rows["pid"], outputs[""], gold))[:20]
            ],
        )

    def _tables(self, results: dict, metrics: dict, effects: dict, rows, outputs: dict) -> str:
        counts = results[""]
        header = "| answered | " + " | ".join(f"{name} ({counts[f'num_{name}']})" for name in CATEGORIES) + " | Avg | unparsed |"
        lines = [header, "|---" * (len(CATEGORIES) + 3) + "|"]
        for prefix, result in results.items():
            cells = ["–" if result[name] is None else f"{result[name]:.1f}" for name in CATEGORIES]
            lines.append(f"| {VARIANT_NAMES[prefix]} | " + " | ".join(cells) + f" | **{result['accuracy']:.1f}** | {result['unparsed']} |")
        examples = "\n".join(
            f"| {row['question']} | {answer['rationale']} | {answer['answer_text']} |"
            for row, answer in list(zip(rows.select_columns(["question"]), outputs[""]))[:6]
        )
        return (
            f"### ScienceQA accuracy ({metrics['num_examples']} {self.data_args.eval_split} problems, {self.data_args.dataset})\n\n"
            + "\n".join(lines)
            + "\n\nCategories as on the ScienceQA leaderboard: NAT/SOC/LAN by subject, TXT with a context, IMG with an image "
            "(they overlap), NO with neither, G1-6/G7-12 by grade. An answer that names no option is wrong and counted "
            "as unparsed, never replaced by a guess.\n\n"
            + "".join(f"- {EFFECT_NAMES[name]}: {effect} points\n" for name, effect in effects.items())
            + "\nAccuracy differences on the same problems, with 95 % percentile bootstrap intervals over the problems "
            "(9,999 resamples).\n\n"
            f"Rationale ROUGE-L (generated vs gold lecture + solution): {metrics['rationale_ROUGE-L']:.1f}. "
            f"Mean fusion gate λ: {_format_gate(metrics['gate_mean_image'])} on problems with an image, "
            f"{_format_gate(metrics['gate_mean_no_image'])} without.\n\n"
            "### Examples (two-stage)\n\n| question | generated rationale | answer |\n|---|---|---|\n" + examples
        )

    def card_fields(self, report: EvaluationReport) -> dict:
        config = self.model_config
        text = config.text_config
        if self.features is not None:
            vision = f"precomputed {config.vision_feature_dim}-wide vision features"
        elif self.model_args.vision_model_name_or_path:
            vision = f"a frozen {self.model_args.vision_model_name_or_path} vision tower"
        else:
            vision = f"a {config.vision_config.num_hidden_layers}-layer vision tower trained from scratch"
        start = self.model_args.model_name_or_path or "scratch (offline Unigram tokenizer)"
        model_id = Path(self.training_args.output_dir).name
        dataset_name, dataset_type = self.data_args.card_dataset("synthetic ScienceQA", self.data_args.data_dir)
        usage = (
            "### Rationale, then answer, in one call\n\n```python\nfrom PIL import Image\n"
            "from transformers import AutoModelForSeq2SeqLM, AutoProcessor\n\n"
            f'model = AutoModelForSeq2SeqLM.from_pretrained("{model_id}", trust_remote_code=True)\n'
            f'processor = AutoProcessor.from_pretrained("{model_id}", trust_remote_code=True)\n'
            'problem = {"question": "What colour is the triangle?", "choices": ["red", "blue", "green"], "hint": "", '
            '"image": Image.open("scene.png")}\n'
            "prediction = model.solve(processor, problem)  # stage 1 writes the rationale, stage 2 reads it\n"
            "prediction.rationale, prediction.letter, prediction.choice  # letter None: the answer named no option\n```\n\n"
        )
        return dict(
            **pipeline_card_fields(MMCoTPipeline, model_id),
            body_markdown=usage + report.tables,
            model_id=model_id,
            title="Multimodal-CoT T5 (rationale, then answer)",
            summary=(
                f"A T5 ({text.num_layers}+{text.num_decoder_layers} layers, width {text.d_model}, from {start}) whose "
                f"encoder output is fused with {vision} by one-head cross-attention and a sigmoid gate; one model writes "
                f"the rationale and then the answer. Trained {self.training_args.max_train_steps} steps on "
                f"{dataset_name}."
            ),
            metric_types={name: "accuracy" for name in report.headline} | {"rationale_ROUGE-L": "rouge"},
            task_type="visual-question-answering",
            task_name="Science question answering with rationales",
            dataset_name=dataset_name,
            dataset_type=dataset_type,
            tags=["multimodal-cot", "t5", "scienceqa", "chain-of-thought", "encoder-decoder"],
        )


def _format_gate(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    run(MMCoTTask)
