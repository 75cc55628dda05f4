"""Argument groups shared by the training scripts, each written once; a task lists the groups it takes.

Every group is a dataclass that `HfArgumentParser` turns into flags, so `python train/<model>.py --help` lists them
all. A task that wants other defaults subclasses a group and overrides the fields (see `Sign2TextTrainingArguments`).
"""

import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import HfArgumentParser

from configuration import SequenceEncoderConfig


@dataclass
class TrainingArguments:
    """Arguments every training script takes."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints, logs, plots and the final model go."})
    seed: int = field(default=0, metadata={"help": "Seed for model initialisation, data order and per-sample augmentation."})
    max_train_steps: int = field(default=800, metadata={"help": "Optimiser steps to train for."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Micro-batch size per process."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Micro-batches per optimiser step. Contrastive models cache features across them, so the "
            "loss sees all k×m samples as negatives (not plain accumulation). Data parallel (DDP) only: FSDP and "
            "DeepSpeed refuse k > 1 (see train/accelerate_configs/)."
        },
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not applied to biases, norms, temperatures)."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps spent in linear warm-up before cosine decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables."})
    mixed_precision: str = field(
        default="auto", metadata={"help": "'auto' (bf16 where the GPU supports it, else fp32), 'no', 'fp16' or 'bf16'."}
    )
    logging_steps: int = field(default=20, metadata={"help": "Log the losses, averaged over the last N steps, every N steps."})
    checkpointing_steps: int = field(default=200, metadata={"help": "Save a resumable checkpoint every N steps; 0 disables."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Keep only the newest N checkpoints (at least 1)."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' for the newest one under output_dir."}
    )
    report_to: str = field(default="auto", metadata={"help": "Tracker: 'auto' (TensorBoard if installed), 'none', or a name accelerate knows."})
    cpu_threads: int = field(
        default=0,
        metadata={"help": "Intra-op threads per process on CPU; 0 shares the cores between processes (accelerate launch alone would pin 1)."},
    )
    eval_steps: int = field(
        default=100, metadata={"help": "Run the collapse checks on a held-out sample every N steps; 0: only the final evaluation."}
    )
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size for the final evaluation."})
    dataloader_num_workers: int = field(
        default=2,
        metadata={
            "help": "Worker processes that collate training batches (decode, process images, tokenise) while the "
            "model trains; 0 collates in the training process, between steps."
        },
    )
    push_to_hub_repo: str | None = field(default=None, metadata={"help": "Also upload the final folder to this Hub repo id."})

    def __post_init__(self):
        for name in (
            "max_train_steps",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "checkpoints_total_limit",
            "eval_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"--dataloader_num_workers must be 0 or more, got {self.dataloader_num_workers}.")


@dataclass
class DatasetNameArguments:
    """The name a model card gives the data: the embedded data set's own, or for the user's files `--dataset_name`
    (default: the data file's name), so a card never claims a data set the run did not use. Mixed into data argument
    groups whose `dataset` field is 'synthetic' for the embedded data."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Your data set's name for the model card (runs on your own files; default: the data file's name)."},
    )

    def __post_init__(self):
        if self.dataset_name is not None and getattr(self, "dataset", None) == "synthetic":
            raise ValueError("--dataset_name names your own data; the embedded synthetic data keeps its own name.")

    def card_dataset(self, embedded_name: str, data_file: str | None) -> tuple[str, str]:
        """`(dataset_name, dataset_type)` for `hub.build_model_card`: `embedded_name` for the embedded data, else
        `--dataset_name` or the name of `data_file`; the type is the name as a Hub id (lower case, dashes)."""
        if getattr(self, "dataset", None) == "synthetic":
            name = embedded_name
        else:
            name = self.dataset_name or Path(data_file).name
        return name, re.sub(r"[^a-z0-9._]+", "-", name.lower()).strip("-")


@dataclass
class SignDataArguments(DatasetNameArguments):
    """Where sign clips come from: the embedded generator or a keypoint table (`data/keypoint_table.py`)."""

    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' (embedded, generated from data_seed) or 'keypoint_table'."})
    num_train: int = field(default=3000, metadata={"help": "synthetic: training clips."})
    num_eval: int = field(default=300, metadata={"help": "synthetic: held-out clips, by signers unseen in training."})
    data_seed: int = field(default=1234, metadata={"help": "synthetic: generator seed."})
    train_table: str | None = field(default=None, metadata={"help": "keypoint_table: training CSV/TSV with id, sentence[, signer_id]."})
    eval_table: str | None = field(default=None, metadata={"help": "keypoint_table: held-out CSV/TSV."})
    keypoint_dir: str | None = field(default=None, metadata={"help": "keypoint_table: folder of <id>.npy keypoints (frames, keypoints, dims)."})
    feature_dir: str | None = field(default=None, metadata={"help": "keypoint_table: folder of <id>.npy frame features (frames, dim)."})


@dataclass
class SequenceTowerArguments:
    """The pose / frame-feature sequence tower (`SequenceEncoderConfig`); keypoint count, coordinate dimensions and
    feature size are read from the data, not set here."""

    use_keypoints: bool = field(default=True, metadata={"help": "Feed pose keypoints."})
    use_visual_features: bool = field(default=True, metadata={"help": "Feed per-frame visual features."})
    max_frames: int = field(default=96, metadata={"help": "Longest clip; longer ones are resampled."})
    sequence_hidden_size: int = field(default=128, metadata={"help": "Width of the sequence tower."})
    sequence_layers: int = field(default=2, metadata={"help": "Layers of the sequence tower."})
    sequence_attention_heads: int = field(default=4, metadata={"help": "Attention heads of the sequence tower."})
    sequence_dropout: float = field(default=0.1, metadata={"help": "Dropout of the sequence tower."})
    center_frame_features: bool = field(
        default=False,
        metadata={
            "help": "Processor: subtract each clip's mean frame feature, so what is constant through a clip (the "
            "signer's appearance, lighting) drops out of the visual stream. Saved with the processor."
        },
    )

    def sequence_config(self, data_shapes: dict[str, int]) -> SequenceEncoderConfig:
        """The tower's config: sizes from these flags, input shapes (`clip_shapes` of the training set) from the data."""
        return SequenceEncoderConfig(
            use_keypoints=self.use_keypoints,
            use_visual_features=self.use_visual_features,
            max_frames=self.max_frames,
            hidden_size=self.sequence_hidden_size,
            num_hidden_layers=self.sequence_layers,
            num_attention_heads=self.sequence_attention_heads,
            intermediate_size=4 * self.sequence_hidden_size,
            dropout=self.sequence_dropout,
            **data_shapes,
        )

    def differences_from(self, config: SequenceEncoderConfig) -> dict[str, tuple]:
        """`{flag: (flag value, config value)}` for every tower flag that `config` sets otherwise: what a pretrained
        tower overrides."""
        wanted = self.sequence_config({})
        names = {
            "use_keypoints": "use_keypoints",
            "use_visual_features": "use_visual_features",
            "max_frames": "max_frames",
            "sequence_hidden_size": "hidden_size",
            "sequence_layers": "num_hidden_layers",
            "sequence_attention_heads": "num_attention_heads",
            "sequence_dropout": "dropout",
        }
        return {
            flag: (getattr(wanted, name), getattr(config, name))
            for flag, name in names.items()
            if getattr(wanted, name) != getattr(config, name)
        }


@dataclass
class LoraArguments:
    """peft LoRA: adapters on chosen layers, every other backbone weight frozen; new heads train in full."""

    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (alpha = 2r)."})


@dataclass
class DecoderLoraArguments(LoraArguments):
    lora_decoder_from_layer: int = field(
        default=-1, metadata={"help": "LoRA on the decoder layers from this index upward, everything else frozen (-1: off)."}
    )


def parse_arguments(*dataclass_types, argv: list[str] | None = None) -> tuple:
    """Parse `argv` (default: the command line), or a single .json file, into the given dataclasses; `--help` lists
    every field."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(dataclass_types)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def arguments_as_dict(*groups) -> dict:
    """All fields of the given argument dataclasses in one flat dict (for trackers and the card)."""
    return {item.name: getattr(group, item.name) for group in groups for item in fields(group)}


__all__ = [
    "DatasetNameArguments",
    "DecoderLoraArguments",
    "LoraArguments",
    "SequenceTowerArguments",
    "SignDataArguments",
    "TrainingArguments",
    "arguments_as_dict",
    "parse_arguments",
]
