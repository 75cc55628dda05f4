"""Train the RAG captioner: a frozen dual-encoder retriever (this project's VLP model or a CLIP checkpoint), a faiss
datastore of training captions, a decoder that writes the caption from the image and the retrieved captions.
Evaluates with ablations, saves a Hub-ready folder with its index.

    accelerate launch train/rag_captioner.py                      # embedded shapes data; trains the VLP retriever first if missing
    accelerate launch train/rag_captioner.py --fusion prompt      # retrieved captions as a text prompt (SmallCap)
    accelerate launch train/rag_captioner.py --dataset coco --coco_annotation_file dataset_coco.json \\
        --coco_image_root coco/ --retriever_model_name_or_path outputs/vlp-coco/final
    accelerate launch train/rag_captioner.py --dataset coco --coco_annotation_file dataset_coco.json \\
        --coco_image_root coco/ --retriever_model_name_or_path openai/clip-vit-base-patch32  # CLIP retrieves
    accelerate launch train/rag_captioner.py --help               # every argument

Before training, the datastore (every training caption) is embedded by the retriever's text tower into the model's
faiss index, and the neighbours of every training image are searched once, its own captions excluded; a training step
pays no search. Per sample, retrieval dropout and random distractors then decide what the decoder sees.

Held-out report: CIDEr-D, BLEU-4 and ROUGE-L of the captions written with retrieval, CIDEr without retrieval, with
random datastore captions and with the image's own references as neighbours (the leakage ceiling), CIDEr of the
nearest retrieved caption used as the caption, and the retriever's image→caption R@K on the held-out pairs.
"""

import json
import logging
import os
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env
from peft import PeftModel
from transformers import AutoImageProcessor, BertTokenizer, GPT2Config

from configuration.configuration_rag_captioner import TINY_DECODER_DEFAULTS, load_retriever_config
from data.coco_karpathy import load_coco_karpathy
from data.synthetic_shapes import make_shapes_splits
from hub import pipeline_card_fields
from modeling import RagCaptionerModel
from modeling.modeling_rag_captioner import retriever_lambda_schedule
from modeling.modeling_retriever import datastore_ids_by_item, sample_retrieval
from processing import RagCaptionerProcessor
from processing.pipeline_rag_captioner import RagCaptioningPipeline
from processing.processing_rag_captioner import train_caption_tokenizer
from train.arguments import DatasetNameArguments, DecoderLoraArguments, TrainingArguments, parse_arguments
from train.evaluation import encode_pairs, load_metric, map_sharded, paired_difference, retrieval_report
from train.lora import apply_lora
from train.runner import EvaluationReport, Task, run

logger = logging.getLogger(__name__)

DEFAULT_RETRIEVER = "outputs/vlp-images/final"
# Modules new to the captioner: trained in full under decoder LoRA too (there are no pretrained weights to adapt), and
# saved with the adapter. The concat fusion's `retrieval_scale` is trained too; being a bare parameter, it reaches the
# merged final model but not the adapter folder.
NEW_MODULES = ("image_projection", "retrieval_projection")
CHECK_SAMPLE_SIZE = 64
ABLATIONS = ("retrieval", "no_retrieval", "random_retrieval", "oracle_retrieval")


@dataclass
class ModelArguments:
    retriever_model_name_or_path: str = field(
        default=DEFAULT_RETRIEVER,
        metadata={
            "help": "The dual encoder (folder or Hub id) that embeds the datastore and the images: a VLP model of "
            "this project or a transformers CLIP checkpoint (e.g. openai/clip-vit-base-patch32). A missing local "
            "folder named 'final' is first trained with train/vlp.py's defaults on the same data (see "
            "--train_retriever_args)."
        },
    )
    train_retriever_args: str = field(
        default="", metadata={"help": "Extra train/vlp.py arguments for a retriever trained because it was missing, e.g. '--max_train_steps 400'."}
    )
    decoder_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Warm-start the decoder from this causal LM (e.g. gpt2); cross-attention is added. Default: a 3-layer GPT-2 from scratch over the retriever's uncased WordPiece vocabulary."},
    )
    decoder_vocab_size: int = field(
        default=1000,
        metadata={
            "help": "Decoder from scratch: learn an uncased WordPiece vocabulary of at most this many tokens from the "
            "training captions (0: the retriever's 30,522-token vocabulary, whose output layer dominates a CPU step)."
        },
    )
    decoder_layers: int = field(default=3, metadata={"help": "Decoder from scratch: GPT-2 layers."})
    decoder_width: int = field(default=256, metadata={"help": "Decoder from scratch: GPT-2 width (a multiple of 64: 64-wide heads)."})
    fusion: str = field(default="concat", metadata={"help": "'concat' (retrieved embeddings appended to the image states) or 'prompt' (captions as a text prompt, SmallCap)."})
    num_retrieved: int = field(default=4, metadata={"help": "k, captions retrieved per image."})
    index_factory: str = field(default="Flat", metadata={"help": "faiss index_factory string: 'Flat' (exact), 'IVF1024,Flat' (50x faster than Flat at 1M captions; recall@10 0.997 on 50k VLP caption embeddings), 'HNSW32'."})
    index_search_parameters: str = field(default="", metadata={"help": "faiss search parameters, e.g. 'nprobe=32' (IVF) or 'efSearch=128' (HNSW); empty: the retriever's measured defaults (IVF nprobe = nlist/64, HNSW efSearch 32)."})
    search_dim: int | None = field(default=None, metadata={"help": "Matryoshka search on this prefix of the embedding, re-ranked at full dimension (one of the retriever's matryoshka_dims)."})
    retriever_lambda: float = field(default=0.1, metadata={"help": "Peak weight of the concat fusion's cosine alignment penalty (linear warm-up, cosine decay)."})
    lambda_warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps over which retriever_lambda warms up."})
    num_frozen_decoder_layers: int = field(default=1, metadata={"help": "First decoder layers kept frozen (the seed design freezes the first)."})
    max_caption_tokens: int = field(default=40, metadata={"help": "Captions, target and retrieved, are cut to this many tokens."})
    num_beams: int = field(default=1, metadata={"help": "Beam size of the held-out captions (1: greedy)."})

    def __post_init__(self):
        if self.fusion not in ("concat", "prompt"):
            raise ValueError(f"--fusion must be 'concat' or 'prompt', got {self.fusion!r}.")


@dataclass
class RetrievalHygieneArguments:
    """What a training image's decoder sees of its neighbours (see `modeling_retriever.sample_retrieval`)."""

    exclude_own_captions: bool = field(
        default=True, metadata={"help": "Never retrieve a training image's own captions (otherwise the decoder learns to copy them and ignores the image)."}
    )
    distractor_prob: float = field(default=0.1, metadata={"help": "Share of samples whose neighbours are k random datastore captions."})
    retrieval_dropout: float = field(default=0.1, metadata={"help": "Share of samples that see no retrieved caption at all."})

    def __post_init__(self):
        for name in ("distractor_prob", "retrieval_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name} must lie in [0, 1], got {getattr(self, name)}.")


@dataclass
class DataArguments(DatasetNameArguments):
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' (embedded shapes, the VLP default run's splits) or 'coco' (Karpathy)."})
    num_train: int = field(default=4000, metadata={"help": "synthetic: training images (their captions are the datastore)."})
    num_eval: int = field(default=500, metadata={"help": "synthetic: held-out images."})
    data_seed: int = field(default=1234, metadata={"help": "synthetic: generator seed (the VLP default's, so the held-out images are held out from the retriever too)."})
    coco_annotation_file: str | None = field(default=None, metadata={"help": "coco: Karpathy dataset_coco.json."})
    coco_image_root: str | None = field(default=None, metadata={"help": "coco: folder holding train2014/ and val2014/."})
    num_plot_examples: int = field(default=8, metadata={"help": "Held-out images in plots/retrieval_examples.png."})

    def __post_init__(self):
        super().__post_init__()
        if self.dataset not in ("synthetic", "coco"):
            raise ValueError(f"--dataset must be 'synthetic' or 'coco', got {self.dataset!r}.")
        if self.dataset == "coco" and not (self.coco_annotation_file and self.coco_image_root):
            raise ValueError("--dataset coco needs --coco_annotation_file and --coco_image_root.")


@dataclass
class RagCaptionerTrainingArguments(TrainingArguments):
    """The shared training arguments with defaults for the embedded run (about 5 minutes on 2 CPU cores)."""

    output_dir: str = field(default="outputs/rag-captioner", metadata={"help": "Where checkpoints, logs, plots and the final model go."})
    max_train_steps: int = field(default=400, metadata={"help": "Optimiser steps to train for."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (a small decoder trained from scratch)."})
    eval_steps: int = field(default=100, metadata={"help": f"CIDEr with retrieval on {CHECK_SAMPLE_SIZE} held-out images every N steps; 0: only at the end."})
    eval_batch_size: int = field(default=128, metadata={"help": "Images per generation batch in the evaluation."})


class StepCounter:
    """The optimiser steps taken, as a checkpointable object: the alignment weight's schedule continues exactly after
    a resume."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


class RagCaptionerTask(Task):
    name = "rag_captioner"
    argument_groups = (ModelArguments, RetrievalHygieneArguments, DecoderLoraArguments, DataArguments, RagCaptionerTrainingArguments)

    def __init__(self, model_args, hygiene_args, lora_args, data_args, training_args):
        super().__init__(model_args, hygiene_args, lora_args, data_args, training_args)
        self.model_args, self.hygiene_args, self.lora_args, self.data_args = model_args, hygiene_args, lora_args, data_args
        self.counter = StepCounter()

    # ------------------------------------------------------------------------------------------------ data and model

    def load_splits(self):
        """Image–captions rows; synthetic images are drawn at the retriever's input size."""
        data = self.data_args
        if data.dataset == "synthetic":
            image_size = load_retriever_config(self.model_args.retriever_model_name_or_path).vision_config.image_size
            splits = make_shapes_splits(data.num_train, data.num_eval, seed=data.data_seed, image_size=image_size)
            train_set, eval_set = splits["train"], splits["validation"]
        else:
            train_set = load_coco_karpathy(data.coco_annotation_file, data.coco_image_root, "train")
            eval_set = load_coco_karpathy(data.coco_annotation_file, data.coco_image_root, "test", max_captions=5)
        # Held-out rows are read one at a time (a COCO test split decoded at once would not fit in memory).
        self.check_sample = [eval_set[i] for i in range(min(CHECK_SAMPLE_SIZE, len(eval_set)))]
        return train_set.add_column("row", list(range(len(train_set)))), eval_set

    def build_model(self, train_set):
        """The captioner around the retriever checkpoint; the datastore is built from the training captions and every
        training image's neighbours are searched once, here."""
        args = self.model_args
        decoder_tokenizer = decoder_config = None
        if args.decoder_model_name_or_path is None:
            decoder_tokenizer = self._caption_tokenizer(train_set) if args.decoder_vocab_size else None
            sizes = {"n_layer": args.decoder_layers, "n_embd": args.decoder_width, "n_head": max(1, args.decoder_width // 64)}
            vocabulary = {"vocab_size": len(decoder_tokenizer)} if decoder_tokenizer is not None else {}
            decoder_config = GPT2Config(**TINY_DECODER_DEFAULTS | sizes | vocabulary)
        model = RagCaptionerModel.from_dual_encoder(
            args.retriever_model_name_or_path,
            decoder_model_name_or_path=args.decoder_model_name_or_path,
            decoder_config=decoder_config,
            decoder_tokenizer=decoder_tokenizer,
            fusion=args.fusion,
            num_retrieved=args.num_retrieved,
            index_factory=args.index_factory,
            index_search_parameters=args.index_search_parameters,
            search_dim=args.search_dim,
            retriever_lambda=args.retriever_lambda,
            num_frozen_decoder_layers=args.num_frozen_decoder_layers,
            max_caption_tokens=args.max_caption_tokens,
        ).to(self.accelerator.device)
        # The image processor alone: the full VLPProcessor would load the folder's tokenizer through its remote code.
        self.image_processor = AutoImageProcessor.from_pretrained(args.retriever_model_name_or_path)
        self._build_datastore(model, train_set)
        if self.lora_args.lora_decoder_from_layer >= 0:
            rank = self.lora_args.lora_rank
            heads = [name for name in NEW_MODULES if getattr(model, name, None) is not None]
            model = apply_lora(
                model, {}, first_layer={"decoder": self.lora_args.lora_decoder_from_layer}, r=rank, alpha=2 * rank, modules_to_save=heads
            )
            if model.base_model.model.retrieval_scale is not None:  # a bare parameter, which modules_to_save cannot name
                model.base_model.model.retrieval_scale.requires_grad_(True)
        return model

    def _caption_tokenizer(self, train_set):
        """Learnt on the main process and sent to the others, so every process has the same vocabulary."""
        vocabulary = [None]
        if self.accelerator.is_main_process:
            captions = (caption for captions in train_set["captions"] for caption in captions)
            vocabulary = [train_caption_tokenizer(captions, self.model_args.decoder_vocab_size).get_vocab()]
        vocabulary = broadcast_object_list(vocabulary)[0]
        logger.info("Decoder vocabulary: %d WordPiece tokens learnt from the training captions", len(vocabulary))
        return BertTokenizer(vocab=vocabulary, do_lower_case=True)

    def _build_datastore(self, model: RagCaptionerModel, train_set) -> None:
        """Every process builds the same index (deterministic, and cheap next to training) rather than receiving it."""
        show = self.accelerator.is_local_main_process
        captions_per_image = train_set["captions"]
        datastore = [caption for captions in captions_per_image for caption in captions]
        logger.info("Building the datastore: %d captions of %d training images", len(datastore), len(train_set))
        model.retriever.build(datastore, batch_size=self.training_args.eval_batch_size * 4, show_progress=show)
        self.own_ids = datastore_ids_by_item([len(captions) for captions in captions_per_image])
        embeddings = torch.cat(
            [
                self._image_embeddings(model, train_set[start : start + 256]["image"])
                for start in range(0, len(train_set), 256)
            ]
        )
        exclude = self.own_ids if self.hygiene_args.exclude_own_captions else None
        self.neighbours = model.retriever.search(
            embeddings, model.config.num_retrieved, exclude=exclude, batch_size=1024, show_progress=show
        ).ids
        logger.info("Searched the %d nearest captions of every training image once, before training", model.config.num_retrieved)

    def _pixel_values(self, images) -> torch.Tensor:
        return self.processor(images=list(images))["pixel_values"].to(self.accelerator.device)

    @torch.no_grad()
    def _image_embeddings(self, model: RagCaptionerModel, images) -> torch.Tensor:
        pixel_values = self.image_processor(list(images), return_tensors="pt")["pixel_values"].to(self.accelerator.device)
        return model.get_image_embeddings(model.get_image_tokens(pixel_values))

    def build_processor(self, model) -> RagCaptionerProcessor:
        unwrapped = model.base_model.model if isinstance(model, PeftModel) else model
        self.captioner: RagCaptionerModel = unwrapped
        return RagCaptionerProcessor(
            image_processor=self.image_processor,
            tokenizer=unwrapped.decoder_tokenizer,
            max_caption_length=unwrapped.config.max_caption_tokens,
        )

    # ------------------------------------------------------------------------------------------------ training

    def collate(self, examples, rngs) -> dict:
        """One caption per image (its own generator draws it), and the datastore ids its decoder sees: the
        pre-computed neighbours, or none (retrieval dropout), or random ones (distractors)."""
        model, hygiene = self.captioner, self.hygiene_args
        captions, retrieved_ids = [], []
        for example, rng in zip(examples, rngs):
            captions.append(example["captions"][rng.integers(len(example["captions"]))])
            row = example["row"]
            retrieved_ids.append(
                sample_retrieval(
                    self.neighbours[row],
                    model.config.num_retrieved,
                    rng,
                    len(model.retriever),
                    exclude=self.own_ids[row] if hygiene.exclude_own_captions else (),
                    distractor_prob=hygiene.distractor_prob,
                    dropout_prob=hygiene.retrieval_dropout,
                )
            )
        images = [example["image"] for example in examples]
        if model.config.fusion == "prompt":
            return dict(self.processor(images=images, text=captions, retrieved_captions=model.retriever.lookup(retrieved_ids)))
        vectors, mask = model.retriever.embeddings(retrieved_ids)
        batch = dict(self.processor(images=images, text=captions))
        return batch | {"retrieved_embeds": torch.from_numpy(vectors), "retrieved_mask": torch.from_numpy(mask)}

    def train_step(self, model, micro_batches) -> dict[str, float]:
        """The shared accumulation step, with the alignment weight of this step's place in the schedule."""
        weight = retriever_lambda_schedule(
            self.counter.step, self.training_args.max_train_steps, self.model_args.retriever_lambda, self.model_args.lambda_warmup_ratio
        )
        logs = super().train_step(model, [batch | {"retriever_lambda": weight} for batch in micro_batches])
        if self.captioner.config.fusion == "concat":
            logs |= {"retriever_lambda": weight, "retrieval_scale": self.captioner.retrieval_scale.item()}
        return logs

    def after_optimizer_step(self, model) -> None:
        self.counter.step += 1

    def checkpoint_state(self, model) -> list:
        return [self.counter]

    # ------------------------------------------------------------------------------------------------ evaluation

    def _caption(self, model: RagCaptionerModel, examples: list[dict], ablations=ABLATIONS) -> list[dict]:
        """Captions of a batch of held-out images under each retrieval condition, with what was retrieved."""
        pixel_values = self._pixel_values([example["image"] for example in examples])
        found = model.retrieve(pixel_values)
        k, size = model.config.num_retrieved, len(model.retriever)
        conditions = {
            "retrieval": {"retrieved_ids": found.ids},
            "no_retrieval": {"retrieved_captions": [[] for _ in examples]},
            # A generator per image, seeded by the run seed and the image id: the same captions whatever the sharding.
            "random_retrieval": {
                "retrieved_ids": np.stack(
                    [np.random.default_rng((self.training_args.seed, example["image_id"])).choice(size, k, replace=False) for example in examples]
                )
            },
            "oracle_retrieval": {"retrieved_captions": [list(example["captions"][:k]) for example in examples]},
        }
        generation = {"num_beams": self.model_args.num_beams, "do_sample": False}
        captions = {
            name: self.processor.batch_decode(model.generate(pixel_values=pixel_values, **conditions[name], **generation))
            for name in ablations
        }
        return [
            {
                "image_id": int(example["image_id"]),
                "retrieved": found.captions[row],
                "retrieved_ids": found.ids[row].tolist(),
                "scores": [round(float(score), 4) for score in found.scores[row]],
                **{name: captions[name][row] for name in ablations},
            }
            for row, example in enumerate(examples)
        ]

    def periodic_check(self, model, step: int) -> dict[str, float]:
        """CIDEr with retrieval on a fixed held-out sample: whether captioning improves, at a glance."""
        sample = self.check_sample
        rows = self._caption(self.captioner, sample, ablations=("retrieval",))
        cider = load_metric("cider").compute(
            predictions=[row["retrieval"] for row in rows], references=[list(example["captions"]) for example in sample]
        )
        return {"CIDEr": cider["cider"]}

    def evaluate(self, model, eval_set) -> EvaluationReport | None:
        """Every condition generated sharded over processes; corpus metrics once, on the whole held-out set."""
        model, examples, batch_size = self.captioner, eval_set, self.training_args.eval_batch_size
        rows = map_sharded(self.accelerator, examples, lambda batch: self._caption(model, batch), batch_size)
        pairs = encode_pairs(
            self.accelerator,
            examples,
            lambda batch: self._image_embeddings(model, [example["image"] for example in batch]),
            model.embed_captions,
            batch_size,
        )
        if not self.accelerator.is_main_process:
            return None
        references = [list(captions) for captions in eval_set["captions"]]
        self.eval_set, self.rows = eval_set, rows
        cider, bleu, rouge = load_metric("cider"), load_metric("bleu"), load_metric("rouge")
        scores, image_ciders = {}, {}
        for name in (*ABLATIONS, "nearest_caption"):
            predictions = [row["retrieved"][0] if name == "nearest_caption" else row[name] for row in rows]
            corpus_cider = cider.compute(predictions=predictions, references=references)
            image_ciders[name] = corpus_cider["scores"]
            scores[name] = {
                "CIDEr": corpus_cider["cider"],
                "BLEU-4": bleu.compute(predictions=predictions, references=references, lowercase=True)["bleu"],
                "ROUGE-L": 100.0 * rouge.compute(predictions=predictions, references=references, tokenizer="unicode")["rougeL"],
            }
        # Retrieval against each baseline on the same images: CIDEr-D is a mean of per-image scores, so the
        # difference gets a bootstrap interval over images (and must show at the table's one decimal to count), and
        # the share of captions retrieval left unchanged.
        gains = {
            name: paired_difference(image_ciders["retrieval"], image_ciders[name], resolution=0.1) for name in ABLATIONS[1:]
        }
        unchanged = {name: float(np.mean([row["retrieval"] == row[name] for row in rows])) for name in ABLATIONS[1:]}
        config = model.config
        dims = [config.retriever_config.projection_dim] + ([config.search_dim] if config.search_dim else [])
        retrieval = retrieval_report(pairs, dims)
        metrics = {
            **scores["retrieval"],
            **{f"{name}_{metric}": value for name in ABLATIONS[1:] for metric, value in scores[name].items()},
            **{f"nearest_caption_{metric}": value for metric, value in scores["nearest_caption"].items()},
            **{f"retriever_{key}": value for key, value in retrieval.headline.items() if key.startswith("v2t_")},
            "distinct_captions": len({row["retrieval"] for row in rows}) / len(rows),
            **{
                f"CIDEr_gain_over_{name}{suffix}": value
                for name, gain in gains.items()
                for suffix, value in (("", gain.mean), ("_ci_low", gain.low), ("_ci_high", gain.high))
            },
            **{f"captions_identical_to_{name}": share for name, share in unchanged.items()},
        }
        return EvaluationReport(
            metrics=metrics,
            headline={
                name: metrics[name]
                for name in (
                    "CIDEr", "BLEU-4", "ROUGE-L", "no_retrieval_CIDEr", "random_retrieval_CIDEr", "oracle_retrieval_CIDEr",
                    "nearest_caption_CIDEr", "retriever_v2t_R@1", "retriever_v2t_R@5",
                )
            },  # fmt: skip
            tables=self._tables(scores, gains, unchanged, retrieval.table, rows, references),
            examples=rows,
        )

    def _tables(
        self, scores: dict, gains: dict, unchanged: dict, retrieval_table: str, rows: list[dict], references: list[list[str]]
    ) -> str:
        labels = {
            "retrieval": "retrieved neighbours (the model)",
            "no_retrieval": "no retrieval",
            "random_retrieval": "random datastore captions",
            "oracle_retrieval": "oracle: the image's own references (leakage ceiling)",
            "nearest_caption": "no decoder: the nearest retrieved caption as the caption",
        }
        lines = ["| condition | CIDEr-D | BLEU-4 | ROUGE-L |", "|---|---|---|---|"]
        lines += [
            f"| {labels[name]} | {values['CIDEr']:.1f} | {values['BLEU-4']:.2f} | {values['ROUGE-L']:.2f} |"
            for name, values in scores.items()
        ]
        verdicts = [
            f"{gains[name].verdict} {labels[name]} ({scores['retrieval']['CIDEr']:.1f} vs {scores[name]['CIDEr']:.1f}; "
            f"per image {gains[name]}; {100 * unchanged[name]:.0f} % of captions unchanged)"
            for name in ABLATIONS[1:]
        ]
        verdict = (
            f"On CIDEr-D, the model with its retrieved neighbours {verdicts[0]}, {verdicts[1]}, and {verdicts[2]}. "
            "Intervals: 95 % percentile bootstrap over the held-out images (9,999 resamples)."
        )
        examples = "\n".join(
            f"| {row['retrieved'][0]} | {row['retrieval']} | {reference[0]} |" for row, reference in list(zip(rows, references))[:6]
        )
        return (
            f"### Captioning, {len(rows)} held-out images (fusion `{self.captioner.config.fusion}`, k = "
            f"{self.captioner.config.num_retrieved}, datastore {len(self.captioner.retriever)} training captions)\n\n"
            + "\n".join(lines)
            + "\n\nCIDEr-D × 100 (pycocoevalcap's scorer, lower-cased, punctuation removed); BLEU-4 (sacrebleu, "
            f"case-insensitive) and ROUGE-L in %, all against every reference caption of the image. {verdict}\n\n"
            f"### Retriever: held-out image → caption retrieval\n\n{retrieval_table}\n\n"
            f"### Examples\n\n| nearest retrieved caption | generated | a reference |\n|---|---|---|\n{examples}"
        )

    def save_plots(self, report, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        chosen = [(self.eval_set[i], row) for i, row in enumerate(self.rows[: self.data_args.num_plot_examples])]
        entries = [
            {
                "image_id": row["image_id"],
                "retrieved": [{"caption": c, "score": s, "datastore_id": i} for c, s, i in zip(row["retrieved"], row["scores"], row["retrieved_ids"])],
                "generated": row["retrieval"],
                "generated_without_retrieval": row["no_retrieval"],
                "references": list(example["captions"]),
            }
            for example, row in chosen
        ]
        (folder / "retrieval_examples.json").write_text(json.dumps(entries, indent=2))
        plot_retrieval_examples([example["image"] for example, _ in chosen], entries, folder / "retrieval_examples.png")

    def card_fields(self, report: EvaluationReport) -> dict:
        args, data, training, config = self.model_args, self.data_args, self.training_args, self.captioner.config
        dataset_name, dataset_type = data.card_dataset("embedded synthetic shapes", data.coco_annotation_file)
        model_id = Path(training.output_dir).name
        hygiene = self.hygiene_args
        decoder = args.decoder_model_name_or_path or f"a {config.decoder_config.num_hidden_layers}-layer GPT-2 trained from scratch"
        return dict(
            **pipeline_card_fields(RagCaptioningPipeline, model_id),
            model_id=model_id,
            title=f"RAG captioner ({args.fusion} fusion)",
            summary=(
                f"A retrieval-augmented captioner: the frozen dual encoder `{args.retriever_model_name_or_path}` "
                f"retrieves the {config.num_retrieved} nearest of {len(self.captioner.retriever)} training captions from "
                f"a faiss `{config.index_factory}` index shipped in this folder, and {decoder} writes the caption from "
                f"the image and the retrieved captions ({args.fusion} fusion). Trained {training.max_train_steps} steps "
                f"on {dataset_name}."
            ),
            body_markdown=(
                f"{report.tables}\n\n## Training\n\n{training.max_train_steps} steps of batch "
                f"{training.per_device_train_batch_size} per process, peak learning rate {training.learning_rate:g}, "
                f"seed {training.seed}. Neighbours of every training image were searched once before training, its own "
                f"captions {'excluded' if hygiene.exclude_own_captions else 'NOT excluded'}; per sample, retrieval dropout "
                f"{hygiene.retrieval_dropout:g} and random distractors {hygiene.distractor_prob:g}."
                + (f" Alignment penalty peak {args.retriever_lambda:g} (warm-up, cosine decay)." if args.fusion == "concat" else "")
                + f"\n\nThe run's `plots/retrieval_examples.png` (and `.json`) shows held-out images with what they retrieved "
                f"and the captions written.\n\n{USAGE}"
            ),
            metric_types={
                "CIDEr": "cider", "BLEU-4": "bleu", "ROUGE-L": "rouge", "no_retrieval_CIDEr": "cider",
                "random_retrieval_CIDEr": "cider", "oracle_retrieval_CIDEr": "cider", "nearest_caption_CIDEr": "cider",
                "retriever_v2t_R@1": "recall", "retriever_v2t_R@5": "recall",
            },  # fmt: skip
            task_type="image-to-text",
            task_name="Image captioning",
            dataset_name=dataset_name,
            dataset_type=dataset_type,
            tags=["image-captioning", "retrieval-augmented-generation", "faiss", f"{args.fusion}-fusion"],
        )


USAGE = """## Captioning with the shipped datastore

```python
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("rag-captioner", trust_remote_code=True)  # the faiss index and datastore come along
processor = AutoProcessor.from_pretrained("rag-captioner", trust_remote_code=True)
pixel_values = processor(images=[Image.open("shapes.png")])["pixel_values"]
print(processor.batch_decode(model.generate(pixel_values=pixel_values)))  # searches the datastore itself
print(model.retrieve(pixel_values).captions)  # what it retrieved
model.retriever.add(["a purple ring in the top left corner"])  # extend the datastore, then model.save_pretrained(...)
```
"""


def plot_retrieval_examples(images: list, entries: list[dict], path: Path, columns: int = 4) -> None:
    """A grid of held-out images, each above its retrieved captions (with scores), the generated caption and a
    reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = -(-len(images) // columns)
    figure = Figure(figsize=(4.4 * columns, 8.0 * rows))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2 * rows, columns, height_ratios=[1.0, 1.6] * rows, hspace=0.05, wspace=0.12)
    wrap = lambda text, indent="": textwrap.fill(text, 48, initial_indent=indent, subsequent_indent="   ")  # noqa: E731
    for position, (image, entry) in enumerate(zip(images, entries)):
        row, column = divmod(position, columns)
        picture, caption = figure.add_subplot(grid[2 * row, column]), figure.add_subplot(grid[2 * row + 1, column])
        picture.imshow(image)
        picture.set_xticks([])
        picture.set_yticks([])
        caption.axis("off")
        retrieved = "\n".join(
            wrap(f"{item['caption']} ({item['score']:.2f})", f"{rank}. ") for rank, item in enumerate(entry["retrieved"], start=1)
        )
        text = f"retrieved:\n{retrieved}\n\ngenerated:\n{wrap(entry['generated'])}\n\nreference:\n{wrap(entry['references'][0])}"
        caption.text(0.0, 0.98, text, transform=caption.transAxes, va="top", ha="left", fontsize=7.5, family="monospace")
    figure.subplots_adjust(left=0.02, right=0.98, top=0.99, bottom=0.01)
    figure.savefig(path, dpi=110)


def ensure_retriever(argv: list[str] | None = None) -> None:
    """Train the VLP retriever with train/vlp.py first if `--retriever_model_name_or_path` names a local `final` folder
    that does not exist yet (the default run on a fresh machine), on the same data as the captioner.

    The main process trains it in a child process while the others wait: a finished run ends its process group, and
    a group started again in the same processes can meet the old one's addresses in the launcher's store."""
    model_args, _, _, data_args, training_args = parse_arguments(*RagCaptionerTask.argument_groups, argv=argv)
    path = Path(model_args.retriever_model_name_or_path)
    if path.exists() or path.name != "final":
        return
    vlp_argv = ["--output_dir", str(path.parent), "--dataset", data_args.dataset, "--seed", str(training_args.seed),
                "--report_to", training_args.report_to, "--cpu_threads", str(training_args.cpu_threads)]  # fmt: skip
    if data_args.dataset == "synthetic":
        vlp_argv += ["--num_train", str(data_args.num_train), "--num_eval", str(data_args.num_eval), "--data_seed", str(data_args.data_seed)]
    else:
        vlp_argv += ["--coco_annotation_file", data_args.coco_annotation_file, "--coco_image_root", data_args.coco_image_root]
        if data_args.dataset_name is not None:
            vlp_argv += ["--dataset_name", data_args.dataset_name]
    vlp_argv += shlex.split(model_args.train_retriever_args)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator reads it: CPU ranks are ranks too
    if state.is_main_process:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        logger.warning("%s does not exist: training the VLP retriever first (train/vlp.py %s)", path, " ".join(vlp_argv))
        # One process on all the cores; the child must not join this launch's process group.
        env = {name: value for name, value in os.environ.items() if name not in DISTRIBUTED_ENV}
        subprocess.run([sys.executable, str(Path(__file__).with_name("vlp.py")), *vlp_argv], env=env, check=False)
    state.wait_for_everyone()
    if not path.is_dir():
        raise RuntimeError(f"Training the VLP retriever into {path.parent} failed (its log is above); fix it or pass --retriever_model_name_or_path.")
    logger.warning("Trained the VLP retriever into %s; now training the captioner", path)


# Variables through which a launcher makes a process one rank of a group.
DISTRIBUTED_ENV = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE"})


def main(argv: list[str] | None = None) -> Path:
    ensure_retriever(argv)
    return run(RagCaptionerTask, argv)


if __name__ == "__main__":
    main()
