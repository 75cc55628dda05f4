"""Benchmark: does data loading starve the training step?

Times VLP training steps (default `train/vlp.py` model on the embedded shapes data) fed by the runner's own data loader
(`train.runner.training_dataloader`: decode the images, process them, tokenise the captions, per micro-batch)
against the same steps on one batch built beforehand. The ratio is what loading adds to a step (CPU time in the
training process plus time spent idle waiting for a batch); 1.0 means the loader keeps up. With `--dataloader_num_workers 0` the collation runs between steps in the training process; with
workers it runs in other processes while the model trains.

    python benchmarks/bench_input_pipeline.py --threads 1        # full sizes
    python benchmarks/bench_input_pipeline.py --quick            # smoke run
"""

import statistics
import time

import torch
from common import apply_common_arguments, benchmark_parser, cpu_seconds, machine_description, print_table

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


def measure(args, workers: int) -> list:
    """Per step: the training process's CPU time on a pre-built batch, its CPU time fed by the loader, and how long
    it sat idle waiting for the workers' next batch. CPU time, not wall time: on a machine shared with other jobs,
    wall time measures their load as much as ours."""
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
        cpu_seconds(lambda: task.collate(*zip(*[rows[i] for i in range(args.batch_size)]))) for _ in range(3)
    )
    waited = 0.0

    def next_batch() -> dict:
        nonlocal batches, waited
        wall, cpu = time.perf_counter(), time.process_time()
        batch = next(batches, None)
        if batch is None:  # a new epoch: new workers, as in the runner
            batches = iter(loader)
            batch = next(batches)
        if workers:  # idle while the workers finish the batch; with none, next() is all our own CPU time
            waited += max(0.0, (time.perf_counter() - wall) - (time.process_time() - cpu))
        return batch

    def loaded_steps() -> None:
        for _ in range(args.steps):
            step(next_batch())

    def prebuilt_steps() -> None:
        for _ in range(args.steps):
            step(prebuilt)

    step(prebuilt)
    triples = []
    for _ in range(args.repeats):
        waited = 0.0
        base, loaded = cpu_seconds(prebuilt_steps), cpu_seconds(loaded_steps)
        triples.append((base, loaded, waited))
    base, loaded, idle = (statistics.median(values) / args.steps for values in zip(*triples))
    ratio = statistics.median((loaded + idle) / base for base, loaded, idle in triples)
    return [workers, args.batch_size, round(collate_ms), round(base * 1e3), round(loaded * 1e3), round(idle * 1e3), ratio]


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="values of --dataloader_num_workers")
    parser.add_argument("--batch_size", type=int, default=64, help="micro-batch (train/vlp.py's default)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per timed block")
    parser.add_argument("--num_train", type=int, default=2048, help="embedded shapes images")
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    if args.quick:
        args.workers, args.batch_size, args.steps, args.num_train = [0, 1], 4, 2, 16
    print(machine_description())
    print_table(
        f"VLP training step fed by the data loader vs on a pre-built batch (training process's CPU ms per step, and "
        f"idle ms waiting for a batch; median of {args.repeats} alternating blocks of {args.steps} steps; collate: "
        f"CPU ms for one micro-batch in-process; ratio: (loader CPU + idle) / pre-built CPU)",
        ["workers", "batch", "collate", "pre-built batch", "data loader", "idle", "ratio"],
        [measure(args, workers) for workers in args.workers],
    )


if __name__ == "__main__":
    main()
