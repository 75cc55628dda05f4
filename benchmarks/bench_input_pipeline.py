"""Benchmark: does data loading starve the training step?

Times VLP training steps (default `train/vlp.py` model on the embedded shapes data) fed by the runner's own data loader
(`train.runner.training_dataloader`: decode the images, process them, tokenise the captions, per micro-batch)
against the same steps on one batch built beforehand. The ratio is what loading adds to a step; 1.0 means the
loader keeps up. With `--dataloader_num_workers 0` the collation runs between steps in the training process; with
workers it runs in other processes while the model trains.

    python benchmarks/bench_input_pipeline.py --threads 1        # full sizes
    python benchmarks/bench_input_pipeline.py --quick            # smoke run
"""

import statistics
import time

import torch
from common import apply_common_arguments, benchmark_parser, machine_description, print_table

from train.arguments import parse_arguments
from train.runner import SeededRows, training_dataloader
from train.vlp import VLPTask


def build(args, workers: int):
    """The task, its training rows, model and optimiser, as `train.runner.run` builds them (no accelerator)."""
    argv = [
        "--num_train", str(args.num_train),
        "--num_eval", "8",
        "--per_device_train_batch_size", str(args.batch_size),
        "--dataloader_num_workers", str(workers),
        "--report_to", "none",
    ]  # fmt: skip
    task = VLPTask(*parse_arguments(*VLPTask.argument_groups, argv=argv))
    train_set, _ = task.load_splits()
    model = task.build_model(train_set).train()
    task.processor = task.build_processor(model)
    return task, SeededRows(train_set, task.training_args.seed), model


def wall_seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(args, workers: int) -> list:
    task, rows, model = build(args, workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(batch: dict) -> None:
        model(**batch, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    loader = training_dataloader(task, rows, task.training_args)
    batches = iter(loader)
    prebuilt = next(batches)  # also starts the workers, outside the timing
    collate_ms = 1e3 * statistics.median(
        wall_seconds(lambda: task.collate(*zip(*[rows[i] for i in range(args.batch_size)]))) for _ in range(3)
    )

    def loaded_steps() -> None:
        nonlocal batches
        for _ in range(args.steps):
            batch = next(batches, None)
            if batch is None:  # a new epoch; persistent workers keep running
                batches = iter(loader)
                batch = next(batches)
            step(batch)

    def prebuilt_steps() -> None:
        for _ in range(args.steps):
            step(prebuilt)

    step(prebuilt)
    pairs = [(wall_seconds(prebuilt_steps), wall_seconds(loaded_steps)) for _ in range(args.repeats)]
    base = statistics.median(p for p, _ in pairs) / args.steps
    ours = statistics.median(loaded for _, loaded in pairs) / args.steps
    ratio = statistics.median(loaded / p for p, loaded in pairs)
    return [workers, args.batch_size, round(collate_ms, 1), round(base * 1e3), round(ours * 1e3), ratio]


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="values of --dataloader_num_workers")
    parser.add_argument("--batch_size", type=int, default=64, help="micro-batch (train/vlp.py's default)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per timed block")
    parser.add_argument("--num_train", type=int, default=2048, help="embedded shapes images")
    args = parser.parse_args()
    apply_common_arguments(args)
    if args.quick:
        args.workers, args.batch_size, args.steps, args.num_train = [0, 1], 4, 2, 16
    print(machine_description())
    print_table(
        f"VLP training step fed by the data loader vs on a pre-built batch (wall ms per step, median of "
        f"{args.repeats} alternating blocks of {args.steps} steps; collate: one micro-batch in-process)",
        ["workers", "batch", "collate", "pre-built batch", "data loader", "ratio"],
        [measure(args, workers) for workers in args.workers],
    )


if __name__ == "__main__":
    main()
