"""The parts of a training run that every model shares: arguments, accelerator, optimiser, loop, checkpoints."""

import importlib.util
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import (
    Accelerator,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
)
from accelerate.utils import ProjectConfiguration, set_seed
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_cosine_schedule_with_warmup

from hub import push_to_hub, save_for_hub
from train.lora import merge_lora

logger = logging.getLogger(__name__)

# What `Accelerator.save_state` writes for one model, optimizer and scheduler.
ACCELERATE_STATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin")
TRAINER_STATE_NAME = "trainer_state.json"


@dataclass
class TrainingArguments:
    """Arguments every training script takes."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints, logs, plots and the final model go."})
    seed: int = field(default=0, metadata={"help": "Seed for model initialisation and data order."})
    max_train_steps: int = field(default=800, metadata={"help": "Optimiser steps to train for."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Micro-batch size per process."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Micro-batches per optimiser step. Contrastive models cache features across them, so the "
            "loss sees all k×m samples as negatives (not plain accumulation)."
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


def parse_arguments(*dataclass_types) -> tuple:
    """Parse the command line (or a single .json file) into the given dataclasses; `--help` lists every field."""
    parser = HfArgumentParser(dataclass_types)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(json_file=sys.argv[1])
    return parser.parse_args_into_dataclasses()


def _resolve_mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _resolve_tracker(requested: str) -> str | None:
    if requested == "auto":
        return "tensorboard" if importlib.util.find_spec("tensorboard") else None
    return None if requested == "none" else requested


def make_accelerator(args: TrainingArguments, project_name: str, hyperparameters: dict) -> Accelerator:
    """An accelerator with seeded data order, the chosen tracker started, and logging set up on every process."""
    tracker = _resolve_tracker(args.report_to)
    accelerator = Accelerator(
        mixed_precision=_resolve_mixed_precision(args.mixed_precision),
        log_with=tracker,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir, "logs"))),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Backbones keep heads we never call (BERT's pooler, CLIP's post-norm); DDP must not wait for their grads.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(args.cpu_threads or max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    set_seed(args.seed)
    if tracker is not None:
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hyperparameters.items()}
        accelerator.init_trackers(project_name, config=flat)
    return accelerator


def create_optimizer_and_scheduler(
    model: torch.nn.Module, args: TrainingArguments
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over trainable parameters, without weight decay on tensors of fewer than 2 dimensions (biases, norms,
    temperatures: open_clip's rule), and linear warm-up followed by cosine decay."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameters; check the freeze options.")
    groups = [
        {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    warmup = math.ceil(args.warmup_ratio * args.max_train_steps)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, args.max_train_steps)


def _checkpoint_dir(output_dir: str) -> Path:
    return Path(output_dir, "checkpoints")


def resolve_checkpoint(args: TrainingArguments) -> Path | None:
    """The checkpoint to resume from, or a clear error if the requested one is absent or incomplete."""
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        candidates = sorted(_checkpoint_dir(args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not candidates:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint under {_checkpoint_dir(args.output_dir)}.")
        path = candidates[-1]
    else:
        path = Path(args.resume_from_checkpoint)
    missing = [name for name in (TRAINER_STATE_NAME, *ACCELERATE_STATE_FILES) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (missing {', '.join(missing)}); pass a folder written by this "
            "trainer under <output_dir>/checkpoints/."
        )
    return path


def save_checkpoint(accelerator: Accelerator, args: TrainingArguments, step: int, history: list[dict] | None = None) -> Path:
    """`save_state` into a temporary folder, then rename it: a crash never leaves a half-written checkpoint. The
    logged `history` so far goes with it, so a resumed run reports the whole run."""
    root = _checkpoint_dir(args.output_dir)
    final, staging = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        (staging / TRAINER_STATE_NAME).write_text(json.dumps({"global_step": step, "log_history": history or []}))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        existing = sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in existing[: -args.checkpoints_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _micro_batches(accelerator: Accelerator, dataloader, start_micro_batch: int) -> Iterator:
    """Endless stream of micro-batches over epochs (reshuffled each epoch), skipping those already consumed."""
    epoch, skip = divmod(start_micro_batch, len(dataloader))
    while True:
        dataloader.set_epoch(epoch)
        yield from accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        epoch, skip = epoch + 1, 0


def train_loop(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    dataloader,
    args: TrainingArguments,
    train_step: Callable[[Sequence[dict]], dict[str, float]],
    after_optimizer_step: Callable[[], None] | None = None,
    periodic_check: Callable[[int], dict[str, float]] | None = None,
) -> list[dict]:
    """Run `args.max_train_steps` optimiser steps; returns the logged history and leaves the model in eval mode.

    `train_step` receives the step's `gradient_accumulation_steps` micro-batches, back-propagates, and returns the
    values to log (at least `loss`). `periodic_check(step)` runs on the main process in eval mode every
    `args.eval_steps` steps before the last (the final evaluation covers that one); its values are logged under
    `check/`. Everything else — clipping, optimiser and schedule, progress bar, trackers, checkpoints, resuming —
    happens here.
    """
    start_step, history = 0, []
    checkpoint = resolve_checkpoint(args)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
        start_step, history = state["global_step"], state.get("log_history", [])
        logger.info("Resumed from %s at step %d", checkpoint, start_step)
    k = args.gradient_accumulation_steps
    if len(dataloader) < k:
        raise ValueError(
            f"The training set gives {len(dataloader)} micro-batches per epoch, fewer than gradient_accumulation_steps={k}."
        )
    batches = _micro_batches(accelerator, dataloader, start_step * k)
    running = []
    progress = tqdm(
        total=args.max_train_steps, initial=start_step, desc="train", disable=not accelerator.is_local_main_process
    )
    model.train()
    for step in range(start_step + 1, args.max_train_steps + 1):
        logs = train_step([next(batches) for _ in range(k)])
        if args.max_grad_norm > 0:
            logs["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if after_optimizer_step is not None:
            after_optimizer_step()
        running.append(logs)
        progress.update(1)
        if step % args.logging_steps == 0 or step == args.max_train_steps:
            record = {name: sum(entry[name] for entry in running) / len(running) for name in running[-1]}
            record |= {"lr": scheduler.get_last_lr()[0], "step": step}
            running = []
            history.append(record)
            accelerator.log({f"train/{name}": value for name, value in record.items() if name != "step"}, step=step)
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if periodic_check is not None and args.eval_steps and step % args.eval_steps == 0 and step < args.max_train_steps:
            if accelerator.is_main_process:
                model.eval()
                with torch.no_grad():
                    checks = periodic_check(step)
                model.train()
                history.append({**{f"check/{name}": value for name, value in checks.items()}, "step": step})
                accelerator.log({f"check/{name}": value for name, value in checks.items()}, step=step)
            accelerator.wait_for_everyone()
        if args.checkpointing_steps and step % args.checkpointing_steps == 0 and step < args.max_train_steps:
            save_checkpoint(accelerator, args, step, history)
    progress.close()
    model.eval()  # ready for the final evaluation
    return history


def save_final_model(model: torch.nn.Module, processor, args: TrainingArguments, model_card: str) -> Path:
    """`<output_dir>/final`: model, processor, bundled code and card, ready for the Hub; pushed with
    `--push_to_hub_repo`. A LoRA model also saves its adapter to `<output_dir>/adapter` and is merged first, so the
    final folder loads as a plain model through AutoModel."""
    output_dir = Path(args.output_dir)
    if isinstance(model, PeftModel):
        model.save_pretrained(output_dir / "adapter")
        model = merge_lora(model)
    final = save_for_hub(model, processor, output_dir / "final", model_card=model_card)
    logger.info("Saved the model, processor, code and card to %s", final)
    if args.push_to_hub_repo:
        logger.info("Pushed: %s", push_to_hub(final, args.push_to_hub_repo))
    return final


def arguments_as_dict(*dataclasses_) -> dict:
    merged = {}
    for item in dataclasses_:
        merged.update(asdict(item))
    return merged


__all__ = [
    "TrainingArguments",
    "arguments_as_dict",
    "create_optimizer_and_scheduler",
    "make_accelerator",
    "parse_arguments",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_final_model",
    "train_loop",
]
