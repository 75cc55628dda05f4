"""Train the VLP dual encoder with accelerate, evaluate retrieval on held-out data, save a Hub-ready folder.

    accelerate launch train/vlp.py                      # embedded shapes data, tiny backbones, ~5 min on 2 CPUs
    accelerate launch train/vlp.py --modality signs     # embedded pose-keypoint + frame-feature clips
    accelerate launch train/vlp.py --help               # every argument
"""

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel

from configuration import VLPConfig
from data.coco_karpathy import load_coco_karpathy
from data.synthetic_shapes import make_shapes_splits
from hub import pipeline_card_fields
from modeling import VLPModel
from processing import VLPProcessor
from processing.pipeline_vlp import VLPZeroShotImagePipeline, VLPZeroShotSignPipeline
from train.arguments import LoraArguments, SequenceTowerArguments, SignDataArguments, TrainingArguments
from train.backbones import load_image_processor, load_tokenizer, tiny_text_config, tiny_vision_config
from train.diagnostics import CollapseCallback, CollapseMonitor, embedding_check_arguments
from train.evaluation import EncodedPairs, encode_pairs, retrieval_report
from train.grad_cache import feature_cached_step
from train.lora import apply_lora
from train.plots import plot_embedding_projection, plot_similarity_distributions
from train.runner import EvaluationReport, Task, run
from train.sign_data import clip_shapes, load_sign_splits, processor_sequence_settings, sequence_inputs

logger = logging.getLogger(__name__)

# Modules trained in full under LoRA: they are new, so there are no pretrained weights to adapt.
VLP_HEADS = ("vision_token_projection", "sequence_token_projection", "pooling", "visual_projection", "text_projection")
VISUAL_INPUTS = ("pixel_values", "keypoints", "frame_features", "frame_mask")
COCO_EVAL_CAPTIONS = 5  # the 5k protocol scores the first five captions of each test image


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
    image_size: int = field(default=64, metadata={"help": "images: input resolution of the tiny default tower."})
    lora_text_layers: int = field(
        default=0, metadata={"help": "LoRA on the top N layers of the text tower (0: off). With LoRA every backbone weight is frozen."}
    )
    lora_vision_layers: int = field(default=0, metadata={"help": "LoRA on the top N layers of the image or sequence tower (0: off)."})

    def __post_init__(self):
        if self.modality not in ("images", "signs"):
            raise ValueError(f"--modality must be 'images' or 'signs', got {self.modality!r}.")


@dataclass
class DataArguments(SignDataArguments):
    dataset: str = field(
        default="synthetic", metadata={"help": "'synthetic' (embedded, generated from data_seed), 'coco' or 'keypoint_table'."}
    )
    num_train: int = field(default=4000, metadata={"help": "synthetic: training items."})
    num_eval: int = field(default=500, metadata={"help": "synthetic: held-out items."})
    coco_annotation_file: str | None = field(default=None, metadata={"help": "coco: Karpathy dataset_coco.json."})
    coco_image_root: str | None = field(default=None, metadata={"help": "coco: folder holding train2014/ and val2014/."})


def text_ids(texts: list[str]) -> torch.Tensor:
    """Ids that are equal when the texts are, and the same on every rank without communication (CRC-32)."""
    return torch.tensor([zlib.crc32(text.encode("utf-8")) for text in texts])


class VLPTask(Task):
    name = "vlp"
    argument_groups = (ModelArguments, SequenceTowerArguments, LoraArguments, DataArguments, TrainingArguments)

    def __init__(self, model_args, sequence_args, lora_args, data_args, training_args):
        super().__init__(model_args, sequence_args, lora_args, data_args, training_args)
        self.model_args, self.sequence_args, self.lora_args, self.data_args = model_args, sequence_args, lora_args, data_args
        if training_args.output_dir == TrainingArguments.output_dir:
            training_args.output_dir = f"outputs/vlp-{model_args.modality}"
        self.monitor = CollapseMonitor(logger=logger)

    def load_splits(self):
        """(train, eval) datasets in the project's image–caption or clip–sentence schema."""
        train_set, eval_set = self._load_splits()
        self._check_sample = eval_set.select(range(min(200, len(eval_set))))
        return train_set, eval_set

    def _load_splits(self):
        data = self.data_args
        if self.model_args.modality == "signs":
            return load_sign_splits(data)
        if data.dataset == "synthetic":
            splits = make_shapes_splits(data.num_train, data.num_eval, seed=data.data_seed, image_size=self.model_args.image_size)
            return splits["train"], splits["validation"]
        if data.dataset == "coco":
            if not (data.coco_annotation_file and data.coco_image_root):
                raise ValueError("--dataset coco needs --coco_annotation_file and --coco_image_root.")
            return (
                load_coco_karpathy(data.coco_annotation_file, data.coco_image_root, "train"),
                load_coco_karpathy(data.coco_annotation_file, data.coco_image_root, "test", max_captions=COCO_EVAL_CAPTIONS),
            )
        raise ValueError(f"--dataset must be 'synthetic' or 'coco' for images, got {data.dataset!r}.")

    def build_model(self, train_set) -> VLPModel | PeftModel:
        """The dual encoder; a sequence tower takes its input shapes from the training clips."""
        args = self.model_args
        use_vision = args.modality == "images"
        sequence_config = None if use_vision else self.sequence_args.sequence_config(
            clip_shapes(train_set, self.sequence_args.use_visual_features)
        )
        head = dict(
            freeze_vision_tower=args.freeze_vision_tower,
            freeze_text_tower=args.freeze_text_tower,
            pooling_type=args.pooling_type,
            num_latents=args.num_latents,
            pooling_hidden_size=args.pooling_hidden_size,
            num_pooling_heads=4,
            projection_dim=args.projection_dim,
            matryoshka_dims=[int(d) for d in args.matryoshka_dims.split(",")],
            loss_type=args.loss_type,
        )
        if args.text_model_name_or_path or (use_vision and args.vision_model_name_or_path):
            if not args.text_model_name_or_path:
                raise ValueError("With --vision_model_name_or_path, also pass --text_model_name_or_path.")
            model = VLPModel.from_backbones(
                text_model_name_or_path=args.text_model_name_or_path,
                vision_model_name_or_path=args.vision_model_name_or_path if use_vision else None,
                sequence_config=sequence_config,
                **head,
            )
        else:
            config = VLPConfig(
                vision_config=tiny_vision_config(args.image_size) if use_vision else None,
                sequence_config=sequence_config,
                text_config=tiny_text_config(vocab_size=len(load_tokenizer())),
                **head,
            )
            model = VLPModel(config)
        if args.lora_text_layers or args.lora_vision_layers:
            model = self._add_lora(model)
        return model

    def _add_lora(self, model: VLPModel) -> PeftModel:
        """LoRA on the top layers of the chosen towers; the pooling and projection heads stay fully trainable."""
        visual_tower = "vision_model" if model.vision_model is not None else "sequence_encoder"
        towers = {"text_model": self.model_args.lora_text_layers, visual_tower: self.model_args.lora_vision_layers}
        rank = self.lora_args.lora_rank
        return apply_lora(
            model,
            {tower: layers for tower, layers in towers.items() if layers},
            r=rank,
            alpha=2 * rank,
            modules_to_save=[name for name in VLP_HEADS if getattr(model, name, None) is not None],
        )

    def build_processor(self, model) -> VLPProcessor:
        self.model_config = model.config
        return VLPProcessor(
            image_processor=load_image_processor(self.model_args.vision_model_name_or_path, self.model_args.image_size),
            tokenizer=load_tokenizer(self.model_args.text_model_name_or_path),
            center_frame_features=self.sequence_args.center_frame_features,
            **processor_sequence_settings(model.config.sequence_config),
        )

    def _visual_inputs(self, examples: list[dict], config: VLPConfig) -> dict:
        if config.vision_config is not None:
            return {"images": [example["image"] for example in examples]}
        return sequence_inputs(examples, config.sequence_config)

    def collate(self, examples, rngs) -> dict:
        """Each image contributes one of its captions, drawn with its own generator, so two captions of one image
        never meet in a batch. Equal texts (two clips of one sentence, two images captioned alike) share a
        `sentence_ids` entry, so the loss treats them as matches, not negatives."""
        texts = [
            example["captions"][rng.integers(len(example["captions"]))] if "captions" in example else example["sentence"]
            for example, rng in zip(examples, rngs)
        ]
        batch = dict(self.processor(text=texts, **self._visual_inputs(examples, self.model_config)))
        return batch | {"sentence_ids": text_ids(texts)}

    def train_step(self, model, micro_batches) -> dict[str, float]:
        """One batch: the loss through `forward`. Several micro-batches: feature-cached accumulation, so the loss
        sees all of them as one contrastive batch (plain accumulation would not add negatives)."""
        unwrapped: VLPModel = self.accelerator.unwrap_model(model)
        if len(micro_batches) == 1:
            outputs = model(**micro_batches[0], return_loss=True)
            self.accelerator.backward(outputs.loss)
            loss = outputs.loss.detach()
        else:
            sentence_ids = torch.cat([batch["sentence_ids"] for batch in micro_batches])
            loss = feature_cached_step(
                self.accelerator,
                unwrapped,
                micro_batches,
                encode=lambda batch: (
                    unwrapped.get_visual_features(**{k: batch[k] for k in VISUAL_INPUTS if k in batch}),
                    unwrapped.get_text_features(batch["input_ids"], batch["attention_mask"]),
                ),
                compute_loss=lambda visual, text: unwrapped.contrastive_loss(visual, text, sentence_ids)[0],
            )
        return {"loss": loss.item(), "temperature": 1 / unwrapped.logit_scale.exp().item()}

    def after_optimizer_step(self, model) -> None:
        model.clamp_logit_scale_()

    def _encode(self, model: VLPModel, rows, sharded: bool) -> EncodedPairs:
        device = self.accelerator.device

        def encode_visual(examples: list[dict]) -> torch.Tensor:
            return model.get_visual_features(**self.processor(**self._visual_inputs(examples, model.config)).to(device))

        def encode_texts(texts: list[str]) -> torch.Tensor:
            return model.get_text_features(**self.processor(text=texts).to(device))

        accelerator = self.accelerator if sharded else None
        return encode_pairs(accelerator, rows, encode_visual, encode_texts, self.training_args.eval_batch_size)

    def periodic_check(self, model, step: int) -> dict[str, float]:
        """Collapse check on a fixed held-out sample of 200 items."""
        embed = lambda: embedding_check_arguments(self._encode(model, self._check_sample, sharded=False))  # noqa: E731
        return CollapseCallback(self.monitor, embed)(step)

    def evaluate(self, model, eval_set) -> EvaluationReport | None:
        """Retrieval at every Matryoshka dimension, computed once; the collapse check and the plots reuse it."""
        self._pairs = self._encode(model, eval_set, sharded=True)
        if not self.accelerator.is_main_process:
            return None
        retrieval = retrieval_report(self._pairs, model.config.matryoshka_dims)
        self.monitor.check_embeddings(**embedding_check_arguments(self._pairs, retrieval))
        return EvaluationReport(metrics=retrieval.metrics, headline=retrieval.headline, tables=retrieval.table)

    def save_plots(self, report, folder: Path) -> None:
        pairs = self._pairs
        single, grouped = (torch.nn.functional.normalize(side, dim=-1) for side in (pairs.single_side, pairs.grouped_side))
        plot_embedding_projection(single, grouped, folder / "tsne.png", text_to_image=pairs.owner, names=pairs.side_names)
        plot_similarity_distributions(single, grouped, pairs.owner, folder / "similarities.png")

    def card_fields(self, report: EvaluationReport) -> dict:
        args, data, training = self.model_args, self.data_args, self.training_args
        dataset_name, dataset_type = data.card_dataset(
            "embedded synthetic shapes" if args.modality == "images" else "embedded synthetic sign clips",
            data.coco_annotation_file if data.dataset == "coco" else data.eval_table,
        )
        k, batch = training.gradient_accumulation_steps, training.per_device_train_batch_size
        accumulation = f" × {k} micro-batches with cached features (one contrastive batch of {k * batch})" if k > 1 else ""
        model_id = Path(training.output_dir).name
        pipeline_class = VLPZeroShotImagePipeline if args.modality == "images" else VLPZeroShotSignPipeline
        return dict(
            **pipeline_card_fields(pipeline_class, model_id),
            model_id=model_id,
            title=f"VLP dual encoder ({args.modality})",
            summary=(
                f"A contrastive vision–language dual encoder ({args.pooling_type} pooling, {args.loss_type} loss, "
                f"Matryoshka dims {args.matryoshka_dims}) trained for {training.max_train_steps} steps on {dataset_name}."
            ),
            body_markdown=(
                f"## Held-out retrieval ({len(self._pairs.single_side)} items)\n\nR@K in %, ranks 1-based; Matryoshka "
                f"rows use the first `dim` coordinates of the same embeddings.\n\n{report.tables}\n\n"
                f"## Training\n\n{training.max_train_steps} steps of batch {batch}{accumulation} per process, peak "
                f"learning rate {training.learning_rate:g}, seed {training.seed}.\n\n{ENCODING_EXAMPLE}"
            ),
            task_type="feature-extraction",
            task_name="Cross-modal retrieval",
            dataset_name=dataset_name,
            dataset_type=dataset_type,
            tags=["vision-language", "contrastive", "matryoshka", "retrieval", args.modality],
        )


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


if __name__ == "__main__":
    run(VLPTask)
