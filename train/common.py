"""Building blocks of `train.runner.run`: accelerator, optimiser and schedule, checkpoints, the final save."""

import importlib.util
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from accelerate import (
    Accelerator,
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
)
from accelerate.utils import ProjectConfiguration, set_seed
from peft import PeftModel
from transformers import get_cosine_schedule_with_warmup

from hub import push_to_hub, save_for_hub
from train.arguments import TrainingArguments
from train.lora import merge_lora

logger = logging.getLogger(__name__)

# What `Accelerator.save_state` writes for one model, optimizer and scheduler.
ACCELERATE_STATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin")
TRAINER_STATE_NAME = "trainer_state.json"


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
        # The schedule is sized in optimiser steps and the loop steps it once per optimiser step. Stepped with the
        # optimizer, accelerate would step it once per process, running N times too fast under N processes.
        step_scheduler_with_optimizer=False,
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


def resume_state(accelerator: Accelerator, args: TrainingArguments) -> tuple[int, list[dict]]:
    """Load `--resume_from_checkpoint` (model, optimiser, schedule, random states and registered objects) and return
    its step and logged history; `(0, [])` for a fresh run."""
    checkpoint = resolve_checkpoint(args)
    if checkpoint is None:
        return 0, []
    accelerator.load_state(str(checkpoint))
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    logger.info("Resumed from %s at step %d", checkpoint, state["global_step"])
    return state["global_step"], state.get("log_history", [])


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


__all__ = [
    "create_optimizer_and_scheduler",
    "make_accelerator",
    "resolve_checkpoint",
    "resume_state",
    "save_checkpoint",
    "save_final_model",
]
