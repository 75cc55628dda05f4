"""Benchmark: what a contrastive training step costs, against the step a user would otherwise run.

1. Feature-cached accumulation (`train.grad_cache.feature_cached_backward`) over k micro-batches against one plain
   step on the same total batch: both give the same gradient (tests/test_distributed.py), so the ratio is the price
   of fitting the batch in the activation memory of one micro-batch. Target ≤ 1.4× (the second forward pass makes
   about 1.33× the floor; GradCache as published costs about 2×).
2. The same step at the largest k with the embedding tables' gradients built densely by every micro-batch's
   backward (torch's default) against added once per step (`train.grad_cache.EmbeddingGradients`), for a BERT-size
   and a multilingual-size vocabulary.
3. One VLP training step against `transformers.VisionTextDualEncoderModel` built from the same vision and text
   configs, on the same batch: forward, backward and AdamW step each. Target ≤ 1.1×. VLP does more per step (an
   attention-pooling head over the image tokens instead of the CLS token, the loss at four Matryoshka dimensions,
   caption-aware targets), so the ratio is what those cost.

All use the default VLP towers (tiny CLIP vision tower on 64-pixel images, tiny BERT; `--tower_width` and
`--tower_layers` for larger ones), random inputs, train mode, and time CPU seconds of this process (see
`process_seconds`).

    python benchmarks/bench_contrastive_step.py --threads 1            # full sizes (total batches 64 and 128)
    python benchmarks/bench_contrastive_step.py --quick                # smoke run
"""

import statistics

import torch
from common import (
    apply_common_arguments,
    benchmark_parser,
    cpu_seconds,
    machine_description,
    median_seconds,
    print_table,
)
from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

from configuration import VLPConfig
from modeling import VLPModel
from train.backbones import tiny_text_config, tiny_vision_config
from train.grad_cache import feature_cached_backward

VISUAL_INPUTS = ("pixel_values",)
# The head `train/vlp.py` builds by default (its ModelArguments; tests/test_benchmarks.py checks they agree).
# Written out because importing train.vlp (plots, data, diagnostics) would double the `--quick` run's time.
VLP_TASK_HEAD = dict(
    pooling_type="attention",
    pooling_hidden_size=128,
    num_pooling_heads=4,
    projection_dim=128,
    matryoshka_dims=[128, 64, 32, 16],
    loss_type="clip",
)


def random_batch(size: int, image_size: int, text_length: int, vocab_size: int, generator: torch.Generator) -> dict:
    """Images and captions of the shapes the processor gives, with distinct sentence ids."""
    attention_mask = torch.ones(size, text_length, dtype=torch.long)
    attention_mask[size // 2 :, text_length * 3 // 4 :] = 0  # some padded captions, as real batches have
    return {
        "pixel_values": torch.randn(size, 3, image_size, image_size, generator=generator),
        "input_ids": torch.randint(1, vocab_size, (size, text_length), generator=generator),
        "attention_mask": attention_mask,
        "sentence_ids": torch.arange(size),
    }


def split(batch: dict, k: int) -> list[dict]:
    chunks = {name: value.chunk(k) for name, value in batch.items()}
    return [{name: parts[i] for name, parts in chunks.items()} for i in range(k)]


def vlp_model(image_size: int, vocab_size: int = 30522, width: int = 128, layers: int = 2) -> VLPModel:
    """The model `train/vlp.py` builds by default (tiny towers, 128 wide, 2 layers; its pooling and Matryoshka head),
    or with towers `width` wide and `layers` deep."""
    config = VLPConfig(
        vision_config=tiny_vision_config(image_size, hidden_size=width, num_layers=layers),
        text_config=tiny_text_config(vocab_size=vocab_size, hidden_size=width, num_layers=layers),
        **VLP_TASK_HEAD,
    )
    return VLPModel(config).train()


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def plain_step(model: VLPModel, optimizer, batch: dict) -> None:
    model(**batch, return_loss=True).loss.backward()
    optimizer_step(optimizer)


def cached_step(model: VLPModel, optimizer, micro_batches: list[dict], per_table_gradients: bool = True) -> None:
    sentence_ids = torch.cat([batch["sentence_ids"] for batch in micro_batches])
    feature_cached_backward(
        micro_batches,
        encode=lambda batch: (
            model.get_visual_features(**{name: batch[name] for name in VISUAL_INPUTS}),
            model.get_text_features(batch["input_ids"], batch["attention_mask"]),
        ),
        compute_loss=lambda visual, text: model.contrastive_loss(visual, text, sentence_ids)[0],
        model=model if per_table_gradients else None,
    )
    optimizer_step(optimizer)


def process_seconds(function) -> float:
    """CPU seconds of `function()` on CPU (`cpu_seconds`); on a GPU, wall time (CUDA synchronised) is what counts."""
    if torch.cuda.is_available():
        return median_seconds(function, 1, warmup=0)
    return cpu_seconds(function)


def paired_timings(baseline, ours, repeats: int) -> tuple[float, float, float]:
    """Median seconds of `baseline()` and `ours()`, timed alternately so that any drift falls on both, and the median
    of the per-pair ratios."""
    pairs = [(process_seconds(baseline), process_seconds(ours)) for _ in range(repeats)]
    return (
        statistics.median(base for base, _ in pairs),
        statistics.median(mine for _, mine in pairs),
        statistics.median(mine / base for base, mine in pairs),
    )


def accumulation_rows(args) -> list[list]:
    rows = []
    model = vlp_model(args.image_size, args.vocab_sizes[0], args.tower_width, args.tower_layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for batch_size in args.batch_sizes:
        generator = torch.Generator().manual_seed(0)
        batch = random_batch(batch_size, args.image_size, args.text_length, args.vocab_sizes[0], generator)
        plain = lambda: plain_step(model, optimizer, batch)  # noqa: E731
        plain()
        for k in args.micro_batches:
            micro_batches = split(batch, k)
            cached = lambda: cached_step(model, optimizer, micro_batches)  # noqa: E731
            cached()
            base, ours, ratio = paired_timings(plain, cached, args.repeats)
            rows.append([batch_size, k, batch_size // k, round(base * 1e3), round(ours * 1e3), ratio])
    return rows


def embedding_rows(args) -> list[list]:
    """Feature-cached steps with the embedding tables' gradients added once per step (ours) or built densely by
    every micro-batch's backward (as before): the gap grows with the vocabulary."""
    rows = []
    k = max(args.micro_batches)
    batch_size = max(args.batch_sizes)
    for vocab_size in args.vocab_sizes:
        generator = torch.Generator().manual_seed(0)
        model = vlp_model(args.image_size, vocab_size, args.tower_width, args.tower_layers)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        batch = random_batch(batch_size, args.image_size, args.text_length, vocab_size, generator)
        micro_batches = split(batch, k)
        dense = lambda: cached_step(model, optimizer, micro_batches, per_table_gradients=False)  # noqa: E731
        once = lambda: cached_step(model, optimizer, micro_batches)  # noqa: E731
        dense(), once()
        base, ours, ratio = paired_timings(dense, once, args.repeats)
        rows.append([vocab_size, batch_size, k, round(base * 1e3), round(ours * 1e3), ratio])
    return rows


def dual_encoder_row(args) -> list:
    """VisionTextDualEncoderModel with the same towers, projection size and batch, against VLP's plain step."""
    generator = torch.Generator().manual_seed(0)
    batch_size = max(args.batch_sizes)
    model = vlp_model(args.image_size, args.vocab_sizes[0], args.tower_width, args.tower_layers)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        model.config.vision_config, model.config.text_config, projection_dim=model.config.projection_dim
    )
    baseline = VisionTextDualEncoderModel(config).train()
    ours_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    baseline_optimizer = torch.optim.AdamW(baseline.parameters(), lr=1e-5)
    batch = random_batch(batch_size, args.image_size, args.text_length, args.vocab_sizes[0], generator)
    baseline_inputs = {name: batch[name] for name in ("pixel_values", "input_ids", "attention_mask")}

    def baseline_step() -> None:
        baseline(**baseline_inputs, return_loss=True).loss.backward()
        optimizer_step(baseline_optimizer)

    ours_step = lambda: plain_step(model, ours_optimizer, batch)  # noqa: E731
    baseline_step(), ours_step()
    base, ours, ratio = paired_timings(baseline_step, ours_step, args.repeats)
    return [batch_size, round(base * 1e3), round(ours * 1e3), ratio]


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 128], help="total contrastive batches")
    parser.add_argument("--micro_batches", type=int, nargs="+", default=[1, 4, 16], help="values of k")
    parser.add_argument(
        "--vocab_sizes", type=int, nargs="+", default=[30522, 250002],
        help="text vocabularies: the first for every table, all for the embedding-gradient one",
    )
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--tower_width", type=int, default=128, help="hidden size of both towers (default: train/vlp.py's)")
    parser.add_argument("--tower_layers", type=int, default=2, help="layers of both towers (default: train/vlp.py's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["embedding", "dual_encoder"], help="tables to leave out")
    parser.add_argument("--text_length", type=int, default=32)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    if args.quick:
        args.batch_sizes, args.micro_batches, args.vocab_sizes = [8], [1, 4], [1000]
        args.image_size, args.text_length = 32, 8
    torch.manual_seed(0)
    print(machine_description())
    print(f"towers: {args.tower_layers} layers, {args.tower_width} wide; images {args.image_size} px, texts {args.text_length} tokens")
    print_table(
        f"Feature-cached accumulation vs one plain step on the same batch (CPU ms, median of {args.repeats} "
        "alternating pairs; ratio: median of pair ratios)",
        ["total batch", "k", "micro-batch", "plain step", "feature-cached", "ratio"],
        accumulation_rows(args),
    )
    if "embedding" not in args.skip:
        print_table(
            f"Feature-cached step at the largest k: embedding gradients per micro-batch vs once per step (CPU ms, "
            f"median of {args.repeats} pairs)",
            ["vocabulary", "total batch", "k", "dense per micro-batch", "once per step", "ratio"],
            embedding_rows(args),
        )
    if "dual_encoder" not in args.skip:
        print_table(
            f"VLP step vs transformers.VisionTextDualEncoderModel, same towers (CPU ms, median of {args.repeats} "
            "alternating pairs; ratio: median of pair ratios)",
            ["batch", "VisionTextDualEncoder", "VLP", "ratio"],
            [dual_encoder_row(args)],
        )

if __name__ == "__main__":
    main()
