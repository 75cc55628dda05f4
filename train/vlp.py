"""Train the VLP dual encoder with accelerate, evaluate retrieval on held-out data, save a Hub-ready folder.

    accelerate launch train/vlp.py                      # embedded shapes data, tiny backbones, ~5 min on 2 CPUs
    accelerate launch train/vlp.py --modality signs     # embedded pose-keypoint + frame-feature clips
    accelerate launch train/vlp.py --help               # every argument
"""

import json
import logging
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from torch.utils.data import DataLoader

from configuration import SequenceEncoderConfig, VLPConfig
from data.coco_karpathy import load_coco_karpathy
from data.synthetic_shapes import make_shapes_splits
from hub import build_model_card
from modeling import VLPModel
from processing import VLPProcessor
from train.backbones import load_image_processor, load_tokenizer, tiny_text_config, tiny_vision_config
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
from train.evaluation import encode_clips_and_sentences, encode_in_batches, retrieval_report
from train.grad_cache import average_gradients_across_ranks, feature_cached_backward
from train.lora import apply_lora
from train.plots import plot_embedding_projection, plot_similarity_distributions
from train.sign_data import clip_shapes, load_sign_splits, processor_sequence_settings, sequence_inputs

logger = logging.getLogger(__name__)

# Modules trained in full under LoRA: they are new, so there are no pretrained weights to adapt.
VLP_HEADS = ("vision_token_projection", "sequence_token_projection", "pooling", "visual_projection", "text_projection")


@dataclass
class ModelArguments:
    modality: str = field(default="images", metadata={"help": "'images' (image tower) or 'signs' (pose/feature sequence tower)."})
    vision_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or folder of a vision backbone, e.g. openai/clip-vit-large-patch14. Default: a tiny CLIP vision tower from config."}
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or folder of a BERT-family text encoder, e.g. distilbert-base-uncased. Default: a tiny BERT from config."}
    )
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Keep the image backbone fixed."})
    freeze_text_tower: bool = field(default=False, metadata={"help": "Keep the text encoder fixed."})
    pooling_type: str = field(default="attention", metadata={"help": "'attention' (MAP head) or 'perceiver'."})
    num_latents: int = field(default=64, metadata={"help": "Perceiver latents."})
    pooling_hidden_size: int = field(default=128, metadata={"help": "Width of the pooling head."})
    projection_dim: int = field(default=128, metadata={"help": "Embedding size (largest Matryoshka dimension)."})
    matryoshka_dims: str = field(default="128,64,32,16", metadata={"help": "Comma-separated nested dimensions."})
    loss_type: str = field(default="clip", metadata={"help": "'clip' (InfoNCE) or 'siglip' (sigmoid)."})
    use_keypoints: bool = field(default=True, metadata={"help": "signs: feed pose keypoints."})
    use_visual_features: bool = field(default=True, metadata={"help": "signs: feed per-frame visual features."})
    max_frames: int = field(default=96, metadata={"help": "signs: longest clip; longer ones are resampled."})
    sequence_hidden_size: int = field(default=128, metadata={"help": "signs: width of the sequence tower."})
    sequence_layers: int = field(default=2, metadata={"help": "signs: layers of the sequence tower."})
    dropout: float = field(default=0.1, metadata={"help": "signs: dropout of the sequence tower."})
    image_size: int = field(default=64, metadata={"help": "images: input resolution of the tiny default tower."})
    lora_text_layers: int = field(
        default=0, metadata={"help": "LoRA on the top N layers of the text tower (0: off). With LoRA every backbone weight is frozen."}
    )
    lora_vision_layers: int = field(default=0, metadata={"help": "LoRA on the top N layers of the image or sequence tower (0: off)."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (alpha = 2r)."})


@dataclass
class DataArguments:
    dataset: str = field(
        default="synthetic", metadata={"help": "'synthetic' (embedded, generated from data_seed), 'coco' or 'keypoint_table'."}
    )
    num_train: int = field(default=4000, metadata={"help": "synthetic: training items."})
    num_eval: int = field(default=500, metadata={"help": "synthetic: held-out items."})
    data_seed: int = field(default=1234, metadata={"help": "synthetic: generator seed."})
    coco_annotation_file: str | None = field(default=None, metadata={"help": "coco: Karpathy dataset_coco.json."})
    coco_image_root: str | None = field(default=None, metadata={"help": "coco: folder holding train2014/ and val2014/."})
    train_table: str | None = field(default=None, metadata={"help": "keypoint_table: training CSV/TSV with id, sentence."})
    eval_table: str | None = field(default=None, metadata={"help": "keypoint_table: held-out CSV/TSV."})
    keypoint_dir: str | None = field(default=None, metadata={"help": "keypoint_table: folder of <id>.npy keypoints."})
    feature_dir: str | None = field(default=None, metadata={"help": "keypoint_table: folder of <id>.npy frame features."})


def build_model(model_args: ModelArguments, tokenizer, train_set) -> VLPModel:
    """The dual encoder for `model_args`; a sequence tower takes its input shapes from the training clips."""
    sequence_config = None
    if model_args.modality == "signs":
        sequence_config = SequenceEncoderConfig(
            use_keypoints=model_args.use_keypoints,
            use_visual_features=model_args.use_visual_features,
            max_frames=model_args.max_frames,
            hidden_size=model_args.sequence_hidden_size,
            num_hidden_layers=model_args.sequence_layers,
            intermediate_size=4 * model_args.sequence_hidden_size,
            dropout=model_args.dropout,
            **clip_shapes(train_set, model_args.use_visual_features),
        )
    elif model_args.modality != "images":
        raise ValueError(f"--modality must be 'images' or 'signs', got {model_args.modality!r}.")
    head = dict(
        freeze_vision_tower=model_args.freeze_vision_tower,
        freeze_text_tower=model_args.freeze_text_tower,
        pooling_type=model_args.pooling_type,
        num_latents=model_args.num_latents,
        pooling_hidden_size=model_args.pooling_hidden_size,
        num_pooling_heads=4,
        projection_dim=model_args.projection_dim,
        matryoshka_dims=[int(d) for d in model_args.matryoshka_dims.split(",")],
        loss_type=model_args.loss_type,
    )
    use_vision = model_args.modality == "images"
    if model_args.text_model_name_or_path or (use_vision and model_args.vision_model_name_or_path):
        if not model_args.text_model_name_or_path:
            raise ValueError("With --vision_model_name_or_path, also pass --text_model_name_or_path.")
        return VLPModel.from_backbones(
            text_model_name_or_path=model_args.text_model_name_or_path,
            vision_model_name_or_path=model_args.vision_model_name_or_path if use_vision else None,
            sequence_config=sequence_config,
            **head,
        )
    config = VLPConfig(
        vision_config=tiny_vision_config(model_args.image_size) if use_vision else None,
        sequence_config=sequence_config,
        text_config=tiny_text_config(vocab_size=len(tokenizer)),
        **head,
    )
    return VLPModel(config)


def load_splits(model_args: ModelArguments, data_args: DataArguments):
    """(train, eval) datasets in the project's image–caption or sequence–sentence schema."""
    if model_args.modality == "signs":
        return load_sign_splits(data_args)
    if data_args.dataset == "synthetic":
        splits = make_shapes_splits(data_args.num_train, data_args.num_eval, seed=data_args.data_seed, image_size=model_args.image_size)
        return splits["train"], splits["validation"]
    if data_args.dataset == "coco":
        if not (data_args.coco_annotation_file and data_args.coco_image_root):
            raise ValueError("--dataset coco needs --coco_annotation_file and --coco_image_root.")
        load = lambda split: load_coco_karpathy(data_args.coco_annotation_file, data_args.coco_image_root, split)  # noqa: E731
        return load("train"), load("test")
    raise ValueError(f"--dataset must be 'synthetic' or 'coco' for images, got {data_args.dataset!r}.")


def add_lora(model: VLPModel, model_args: ModelArguments) -> PeftModel:
    """LoRA on the top layers of the chosen towers; the pooling and projection heads stay fully trainable."""
    visual_tower = "vision_model" if model.vision_model is not None else "sequence_encoder"
    towers = {"text_model": model_args.lora_text_layers, visual_tower: model_args.lora_vision_layers}
    return apply_lora(
        model,
        {tower: layers for tower, layers in towers.items() if layers},
        r=model_args.lora_rank,
        alpha=2 * model_args.lora_rank,
        modules_to_save=[name for name in VLP_HEADS if getattr(model, name, None) is not None],
    )


def visual_inputs(examples: list[dict], config: VLPConfig) -> dict:
    """Processor inputs for the visual side of a list of dataset rows."""
    if config.vision_config is not None:
        return {"images": [example["image"] for example in examples]}
    return sequence_inputs(examples, config.sequence_config)


def text_ids(texts: list[str]) -> torch.Tensor:
    """Ids that are equal when the texts are, and the same on every rank without communication (CRC-32)."""
    return torch.tensor([zlib.crc32(text.encode("utf-8")) for text in texts])


def make_train_collator(processor: VLPProcessor, config: VLPConfig, seed: int):
    """Each image contributes one of its captions, drawn afresh each time, so two captions of one image never meet in
    a batch. Equal texts (two clips of one sentence, two images captioned alike) share a `sentence_ids` entry, so
    the loss treats them as matches, not negatives."""
    rng = random.Random(seed)

    def collate(examples: list[dict]) -> dict:
        texts = [rng.choice(ex["captions"]) if "captions" in ex else ex["sentence"] for ex in examples]
        batch = dict(processor(text=texts, **visual_inputs(examples, config)))
        return batch | {"sentence_ids": text_ids(texts)}

    return collate


def encode_eval_set(model: VLPModel, processor: VLPProcessor, dataset, batch_size: int, device) -> dict:
    """Unnormalised embeddings of every held-out visual item and text, paired as `retrieval_report` expects: each
    image has several captions (`text_to_visual`); several clips share a sentence (`visual_to_text`)."""

    def encode_visual(examples: list[dict]) -> torch.Tensor:
        return model.get_visual_features(**processor(**visual_inputs(examples, model.config)).to(device))

    def encode_texts(texts: list[str]) -> torch.Tensor:
        return model.get_text_features(**processor(text=texts).to(device))

    if "captions" not in dataset.column_names:
        return encode_clips_and_sentences(dataset, encode_visual, encode_texts, batch_size)
    captions = dataset["captions"]
    texts = [caption for image_captions in captions for caption in image_captions]
    return {
        "visual": encode_in_batches(encode_visual, dataset, batch_size),
        "text": encode_in_batches(encode_texts, texts, batch_size),
        "text_to_visual": torch.tensor([row for row, image_captions in enumerate(captions) for _ in image_captions]),
        "visual_to_text": None,
        "texts": texts,
    }


def main() -> None:
    model_args, data_args, train_args = parse_arguments(ModelArguments, DataArguments, TrainingArguments)
    if train_args.output_dir == TrainingArguments.output_dir:
        train_args.output_dir = f"outputs/vlp-{model_args.modality}"
    accelerator = make_accelerator(train_args, "vlp", arguments_as_dict(model_args, data_args, train_args))

    train_set, eval_set = load_splits(model_args, data_args)
    tokenizer = load_tokenizer(model_args.text_model_name_or_path)
    model = build_model(model_args, tokenizer, train_set)
    if model_args.lora_text_layers or model_args.lora_vision_layers:
        model = add_lora(model, model_args)
    processor = VLPProcessor(
        image_processor=load_image_processor(model_args.vision_model_name_or_path, model_args.image_size),
        tokenizer=tokenizer,
        **processor_sequence_settings(model.config.sequence_config),
    )
    logger.info(
        "VLP %s: %d train / %d eval items, %.2fM trainable parameters",
        model_args.modality,
        len(train_set),
        len(eval_set),
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )
    dataloader = DataLoader(
        train_set,
        batch_size=train_args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,  # equal batches on every rank: the gathered contrastive loss needs them
        collate_fn=make_train_collator(processor, model.config, train_args.seed),
    )
    optimizer, scheduler = create_optimizer_and_scheduler(model, train_args)
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    unwrapped: VLPModel = accelerator.unwrap_model(model)

    def encode(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        visual = {k: batch[k] for k in ("pixel_values", "keypoints", "frame_features", "frame_mask") if k in batch}
        return unwrapped.get_visual_features(**visual), unwrapped.get_text_features(batch["input_ids"], batch["attention_mask"])

    def train_step(micro_batches: list[dict]) -> dict[str, float]:
        if len(micro_batches) == 1:
            outputs = model(**micro_batches[0])
            accelerator.backward(outputs.loss)
            loss = outputs.loss.detach()
        else:
            sentence_ids = torch.cat([batch["sentence_ids"] for batch in micro_batches])
            loss = feature_cached_backward(
                micro_batches,
                encode,
                lambda visual, text: unwrapped.contrastive_loss(visual, text, sentence_ids)[0],
                backward=accelerator.backward,
                autocast=accelerator.autocast,
            )
            average_gradients_across_ranks(unwrapped.parameters())
        return {"loss": loss.item(), "temperature": 1 / unwrapped.logit_scale.exp().item()}

    check_sample = eval_set.select(range(min(200, len(eval_set))))
    monitor = CollapseMonitor(logger=logger)
    collapse_callback = CollapseCallback(
        monitor,
        embed=lambda: embedding_check_arguments(
            encode_eval_set(unwrapped, processor, check_sample, train_args.eval_batch_size, accelerator.device)
        ),
    )
    history = train_loop(
        accelerator,
        model,
        optimizer,
        scheduler,
        dataloader,
        train_args,
        train_step,
        after_optimizer_step=unwrapped.clamp_logit_scale_,
        periodic_check=collapse_callback,
    )

    if accelerator.is_main_process:
        output_dir = Path(train_args.output_dir)
        encoded = encode_eval_set(unwrapped, processor, eval_set, train_args.eval_batch_size, accelerator.device)
        report = retrieval_report(encoded, unwrapped.config.matryoshka_dims)
        monitor.check_embeddings(**embedding_check_arguments(encoded))
        accelerator.log({f"eval/{k}": v for k, v in report["metrics"].items()}, step=train_args.max_train_steps)
        print(report["table"])
        plots = output_dir / "plots"
        pairs, names = encoded["text_to_visual"], ("images", "captions")
        normalize = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
        visual_embeds, text_embeds = normalize(encoded["visual"]), normalize(encoded["text"])
        if pairs is None:  # sign clips: each sentence has several clips, so sentences take the plots' "image" role
            visual_embeds, text_embeds, pairs = text_embeds, visual_embeds, encoded["visual_to_text"]
            names = ("sentences", "clips")
        plot_embedding_projection(visual_embeds, text_embeds, plots / "tsne.png", text_to_image=pairs, names=names)
        plot_similarity_distributions(visual_embeds, text_embeds, pairs, plots / "similarities.png")
        (output_dir / "eval_results.json").write_text(json.dumps({"metrics": report["metrics"], "train_history": history}, indent=2))
        card = build_model_card(**vlp_card_fields(model_args, data_args, train_args, report, len(eval_set)))
        save_final_model(unwrapped, processor, train_args, card)
    accelerator.end_training()


ENCODING_EXAMPLE = """## Encoding one side

```python
import torch

with torch.no_grad():
    image_embeds = model.get_visual_features(**processor(images=images))  # or keypoints=..., frame_features=...
    text_embeds = model.get_text_features(**processor(text=["a red circle in the middle"]))
# Matryoshka: the first 64 (or 32, 16) coordinates are an embedding of their own; normalise after slicing.
scores = torch.nn.functional.normalize(image_embeds[:, :64], dim=-1) @ torch.nn.functional.normalize(text_embeds[:, :64], dim=-1).T
```
"""


def vlp_card_fields(model_args, data_args, train_args, report: dict, num_eval: int) -> dict:
    source = "embedded synthetic shapes" if model_args.modality == "images" else "embedded synthetic sign clips"
    dataset_name = source if data_args.dataset == "synthetic" else data_args.dataset
    k, batch = train_args.gradient_accumulation_steps, train_args.per_device_train_batch_size
    accumulation = f" × {k} micro-batches with cached features (one contrastive batch of {k * batch})" if k > 1 else ""
    return dict(
        model_id=Path(train_args.output_dir).name,
        title=f"VLP dual encoder ({model_args.modality})",
        summary=(
            f"A contrastive vision–language dual encoder ({model_args.pooling_type} pooling, {model_args.loss_type} loss, "
            f"Matryoshka dims {model_args.matryoshka_dims}) trained for {train_args.max_train_steps} steps on {dataset_name}."
        ),
        body_markdown=(
            f"## Held-out retrieval ({num_eval} items)\n\nR@K in %, ranks 1-based; Matryoshka rows use the first `dim` "
            f"coordinates of the same embeddings.\n\n{report['table']}\n\n"
            f"## Training\n\n{train_args.max_train_steps} steps of batch {train_args.per_device_train_batch_size}"
            f"{accumulation} per process, peak learning rate {train_args.learning_rate:g}, seed {train_args.seed}.\n\n"
            f"{ENCODING_EXAMPLE}"
        ),
        results=report["headline"],
        task_type="feature-extraction",
        task_name="Cross-modal retrieval",
        dataset_name=dataset_name,
        dataset_type=dataset_name.replace(" ", "-"),
        tags=["vision-language", "contrastive", "matryoshka", "retrieval", model_args.modality],
    )


if __name__ == "__main__":
    main()
