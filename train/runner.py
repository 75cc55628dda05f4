"""One runner for every model: a `Task` says what is specific to a model, `run(TaskClass)` does the rest.

    accelerate launch train/<model>.py --help

A task supplies its argument groups, data splits, model, processor, collate, training step, evaluation and card
fields. `run` parses the command line, builds the accelerator, data loader, optimiser and schedule, trains with
checkpoints and periodic checks, evaluates on every process, and on the main process writes `eval_results.json`,
the model card and the Hub-ready `final/` folder. The loop below is the whole of training, in the order of
accelerate's examples: step, clip, optimiser, schedule, zero the gradients.
"""

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from accelerate import Accelerator, DistributedType
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hub import build_model_card
from train.arguments import TrainingArguments, arguments_as_dict, parse_arguments
from train.common import create_optimizer_and_scheduler, make_accelerator, resume_state, save_checkpoint, save_final_model

logger = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    """What a task's final evaluation found."""

    metrics: dict[str, float]
    """Every number measured: `eval_results.json` → `metrics` and the tracker's `eval/` scalars."""
    headline: dict[str, float]
    """The numbers the model card publishes in its `model-index`."""
    tables: str
    """Markdown printed at the end of the run and used as the body of the model card."""
    examples: list = field(default_factory=list)
    """Example outputs for `eval_results.json` (e.g. `(reference, generated)` pairs)."""


class Task:
    """One model's training recipe.

    `run(TaskClass)` parses `argument_groups` from the command line (the last group is `TrainingArguments` or a
    subclass), calls `TaskClass(*groups)`, sets `task.accelerator`, and then calls, in this order:

    1. `load_splits()` → `(train_set, eval_set)`;
    2. `build_model(train_set)` → the model; `build_processor(model)` → the processor, kept as `task.processor`;
    3. per optimiser step, `collate(examples, rngs)` through the data loader for each micro-batch, then
       `train_step(model, micro_batches)`, clipping, the optimiser and the schedule, `after_optimizer_step(model)`;
       every `eval_steps` steps `periodic_check(model, step)` on the main process;
    4. `evaluate(model, eval_set)` on every process (shard work with `train.evaluation.map_sharded`) → an
       `EvaluationReport`, used on the main process only (others may return `None`); then, on the main process,
       `save_plots(report, folder)` and `card_fields(report)` for the model card.
    """

    name: ClassVar[str]
    argument_groups: ClassVar[tuple[type, ...]]
    accelerator: Accelerator
    processor: Any

    def __init__(self, *groups):
        self.training_args: TrainingArguments = groups[-1]
        self.hyperparameters = arguments_as_dict(*groups)

    def load_splits(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def build_model(self, train_set) -> torch.nn.Module:
        raise NotImplementedError

    def build_processor(self, model):
        raise NotImplementedError

    def collate(self, examples: list[dict], rngs: list[np.random.Generator]) -> dict:
        """A training micro-batch; `rngs[i]` is example i's own generator for caption choice and augmentation."""
        raise NotImplementedError

    def train_step(self, model: torch.nn.Module, micro_batches: list[dict]) -> dict[str, float]:
        """Plain gradient accumulation: back-propagate the mean loss of the micro-batches; DDP synchronises the
        gradients once, on the last one. Logs every scalar `*loss` field of the model's output."""
        logs: dict[str, float] = {}
        for index, batch in enumerate(micro_batches):
            is_last = index == len(micro_batches) - 1
            with contextlib.nullcontext() if is_last else self.accelerator.no_sync(model):
                outputs = model(**batch)
                self.accelerator.backward(outputs.loss / len(micro_batches))
            for name, value in outputs.items():
                if name.endswith("loss") and isinstance(value, torch.Tensor) and value.ndim == 0:
                    logs[name] = logs.get(name, 0.0) + value.item() / len(micro_batches)
        return logs

    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        """Called after every optimiser step with the unwrapped model (e.g. to clamp a temperature)."""

    def periodic_check(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Numbers logged under `check/` every `eval_steps` steps (main process, eval mode, no grad)."""
        return {}

    def checkpoint_state(self, model: torch.nn.Module) -> list:
        """Objects with `state_dict`/`load_state_dict` that a checkpoint must carry besides the model, optimiser,
        schedule and random states (e.g. a queue of past embeddings), so a resumed run continues exactly."""
        return []

    def evaluate(self, model: torch.nn.Module, eval_set) -> EvaluationReport | None:
        raise NotImplementedError

    def card_fields(self, report: EvaluationReport) -> dict:
        """Keyword arguments of `hub.build_model_card`; `results` is the report's headline and `body_markdown` its
        tables unless given here."""
        raise NotImplementedError

    def save_plots(self, report: EvaluationReport, folder: Path) -> None:
        """Write figures of the final evaluation into `folder` (main process)."""


class SeededRows(Dataset):
    """Rows paired with a generator seeded by `(seed, epoch, row index)`: a sample's randomness (caption choice,
    augmentation) does not depend on the rank, batch or prefetch order that draws it, so every rank augments
    differently and a resumed run draws exactly what the uninterrupted one did."""

    def __init__(self, rows, seed: int):
        self.rows, self.seed, self.epoch = rows, seed, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[dict, np.random.Generator]:
        return self.rows[index], np.random.default_rng((self.seed, self.epoch, index))


def training_dataloader(task: Task, rows: SeededRows, args: TrainingArguments) -> DataLoader:
    """Shuffled, equal-sized micro-batches of `task.collate`. With `--dataloader_num_workers` the collation (image
    decoding and processing, tokenising) runs in worker processes that prepare the next batches while the model
    trains on this one. The workers start anew each epoch (not `persistent_workers`): they must see the epoch that
    `SeededRows` seeds its generators with."""
    return DataLoader(
        rows,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,  # equal batches on every rank: gathered contrastive losses need them
        # Its own generator: starting an epoch's iterator then draws no number from the global RNG, which would
        # otherwise shift dropout after a resume (the resumed run starts that iterator at another moment).
        generator=torch.Generator().manual_seed(args.seed),
        collate_fn=lambda items: task.collate([row for row, _ in items], [rng for _, rng in items]),
        num_workers=args.dataloader_num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def _endless_micro_batches(accelerator: Accelerator, dataloader, rows: SeededRows, start_micro_batch: int):
    """Micro-batches over epochs (reshuffled each epoch), skipping those a resumed run already consumed."""
    epoch, skip = divmod(start_micro_batch, len(dataloader))
    while True:
        dataloader.set_epoch(epoch)
        rows.epoch = epoch
        yield from accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        epoch, skip = epoch + 1, 0


def run(task_class: type[Task], argv: list[str] | None = None) -> Path:
    """Train, evaluate and save the model of `task_class` as `argv` (default: the command line) asks; returns the
    final folder. One task may run another first (the RAG captioner trains its retriever this way)."""
    task = task_class(*parse_arguments(*task_class.argument_groups, argv=argv))
    args = task.training_args
    accelerator = make_accelerator(args, task.name, task.hyperparameters)
    k = args.gradient_accumulation_steps
    # Refused before any data is loaded or model built.
    if k > 1 and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(
            f"--gradient_accumulation_steps {k} under DeepSpeed: DeepSpeed steps the optimiser inside every backward "
            "this loop makes, so it would take k steps instead of one. Use --gradient_accumulation_steps 1 with a "
            "larger --per_device_train_batch_size, or the DDP config train/accelerate_configs/ddp_multi_gpu.yaml."
        )
    task.accelerator = accelerator

    train_set, eval_set = task.load_splits()
    model = task.build_model(train_set)
    task.processor = task.build_processor(model)
    logger.info(
        "%s: %d train / %d eval items, %.2fM trainable parameters",
        task.name,
        len(train_set),
        len(eval_set),
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )
    rows = SeededRows(train_set, args.seed)
    dataloader = training_dataloader(task, rows, args)
    optimizer, scheduler = create_optimizer_and_scheduler(model, args)
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    if len(dataloader) < k:
        raise ValueError(
            f"The training set gives {len(dataloader)} micro-batches per epoch and process, fewer than "
            f"--gradient_accumulation_steps {k}; use a smaller batch or more data."
        )
    unwrapped = accelerator.unwrap_model(model)
    accelerator.register_for_checkpointing(*task.checkpoint_state(unwrapped))
    start_step, history = resume_state(accelerator, args)

    batches = _endless_micro_batches(accelerator, dataloader, rows, start_step * k)
    progress = tqdm(total=args.max_train_steps, initial=start_step, desc="train", disable=not accelerator.is_local_main_process)
    window: list[dict[str, float]] = []
    model.train()
    for step in range(start_step + 1, args.max_train_steps + 1):
        logs = task.train_step(model, [next(batches) for _ in range(k)])
        if args.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            if grad_norm is not None:  # DeepSpeed clips inside its own step and may not report the norm
                logs["grad_norm"] = float(grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_optimizer_step(unwrapped)
        progress.update(1)

        window.append(logs)
        if step % args.logging_steps == 0 or step == args.max_train_steps:
            record = {name: sum(entry[name] for entry in window) / len(window) for name in window[-1]}
            record |= {"lr": scheduler.get_last_lr()[0], "step": step}
            window = []
            history.append(record)
            accelerator.log({f"train/{name}": value for name, value in record.items() if name != "step"}, step=step)
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if args.eval_steps and step % args.eval_steps == 0 and step < args.max_train_steps:
            if accelerator.is_main_process:
                model.eval()
                with torch.no_grad():
                    checks = task.periodic_check(unwrapped, step)
                model.train()
                if checks:
                    history.append({**{f"check/{name}": value for name, value in checks.items()}, "step": step})
                    accelerator.log({f"check/{name}": value for name, value in checks.items()}, step=step)
            accelerator.wait_for_everyone()
        if args.checkpointing_steps and step % args.checkpointing_steps == 0 and step < args.max_train_steps:
            save_checkpoint(accelerator, args, step, history)
    progress.close()

    model.eval()
    with torch.no_grad():
        report = task.evaluate(unwrapped, eval_set)
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        print(report.tables)
        accelerator.log({f"eval/{name}": value for name, value in report.metrics.items()}, step=args.max_train_steps)
        results = {"metrics": report.metrics, "examples": report.examples, "train_history": history}
        (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
        task.save_plots(report, output_dir / "plots")
        card = build_model_card(**{"body_markdown": report.tables, "results": report.headline, **task.card_fields(report)})
        save_final_model(unwrapped, task.processor, args, card)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return Path(args.output_dir, "final")


__all__ = ["EvaluationReport", "SeededRows", "Task", "run", "training_dataloader"]
