"""Gradient accumulation that adds negatives: feature caching in the style of GradCache (Gao et al., 2021).

Plain accumulation of k micro-batches of m only ever contrasts m samples with each other. Here the
representations of all k×m samples are computed first without a graph, the loss is taken on that whole cached
batch (so every sample is a negative for every other), its gradient with respect to each representation is kept,
and each micro-batch is then re-encoded with a graph and back-propagated with `(representation * cached_grad).sum()`.
The parameter gradient is exactly that of one k×m batch, for one extra forward pass (about 1.33× a plain step in
theory) and the activation memory of one micro-batch. The random state is replayed so that dropout masks match
between passes.

Each re-encoding pass is a backward of its own, and an `nn.Embedding` turns every backward into a dense gradient of
its whole table (30,522 × 128 floats for BERT's word embeddings, to update a few hundred rows): with k = 16 that
zero-fill and add ran 16 times per step. Given the model, the embedding tables instead collect the gradients of
their outputs and receive them once (`EmbeddingGradients`): a k = 16 step takes 3 % less time with a 30k vocabulary
and 44 % less with a 250k multilingual one (benchmarks/bench_contrastive_step.py).
"""

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from accelerate import DistributedType
from torch import nn


class RandomState:
    """The CPU and CUDA generator states at one moment, to replay a forward pass with identical dropout."""

    def __init__(self):
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if self.cuda_states else []):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_states:
                torch.cuda.set_rng_state_all(self.cuda_states)
            yield


class EmbeddingGradients:
    """The gradients of a model's trainable embedding tables over several backward passes, added to `.grad` once.

    Inside `cut()`, each table's output is detached from the table (a copy of a leaf that requires grad), so a
    backward pass stops there instead of building a table-sized gradient; `collect()` then scatters the output
    gradients of that pass into one buffer per table, and `write()` adds the buffers to the tables' `.grad`. Tables
    with `max_norm`, `scale_grad_by_freq` or sparse gradients keep torch's own backward.
    """

    def __init__(self, model: nn.Module):
        self.tables = [
            module
            for module in model.modules()
            if isinstance(module, nn.Embedding)
            and module.weight.requires_grad
            and module.max_norm is None
            and not module.scale_grad_by_freq
            and not module.sparse
        ]
        self.buffers: dict[nn.Embedding, torch.Tensor] = {}
        self.pending: list[tuple[nn.Embedding, torch.Tensor, torch.Tensor]] = []

    def _detach_output(self, module: nn.Embedding, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not torch.is_grad_enabled():
            return None
        leaf = output.detach().requires_grad_()
        self.pending.append((module, inputs[0], leaf))
        return leaf.clone()  # not the leaf itself: a model may modify its embeddings in place

    @contextmanager
    def cut(self):
        handles = [table.register_forward_hook(self._detach_output) for table in self.tables]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def collect(self) -> None:
        """Scatter the output gradients of the last backward pass into the buffers (rows of `padding_idx` get none,
        as in torch's own embedding backward)."""
        for table, ids, leaf in self.pending:
            if leaf.grad is None:
                continue
            ids, grad = ids.reshape(-1), leaf.grad.reshape(-1, leaf.shape[-1])
            if table.padding_idx is not None:
                keep = ids != table.padding_idx
                ids, grad = ids[keep], grad[keep]
            if table not in self.buffers:
                self.buffers[table] = torch.zeros_like(table.weight)
            self.buffers[table].index_add_(0, ids, grad.to(table.weight.dtype))
        self.pending.clear()

    def write(self) -> None:
        for table, buffer in self.buffers.items():
            table.weight.grad = buffer if table.weight.grad is None else table.weight.grad.add_(buffer)
        self.buffers.clear()


def feature_cached_backward(
    micro_batches: Sequence[dict],
    encode: Callable[[dict], tuple[torch.Tensor, ...]],
    compute_loss: Callable[..., torch.Tensor],
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    autocast: Callable = nullcontext,
    model: nn.Module | None = None,
) -> torch.Tensor:
    """Accumulate into `.grad` the gradient of `compute_loss` over the concatenation of all micro-batches.

    Args:
        micro_batches: inputs of each micro-batch.
        encode: maps one micro-batch to its representations, e.g. `(visual_features, text_features)`.
        compute_loss: maps the concatenated representations (same order as `encode` returns them) to the loss.
            Parameters it uses directly (a learnable temperature) get their gradient from this call.
        backward: how to back-propagate the loss, e.g. `accelerator.backward` (applies fp16 loss scaling; the
            cached gradients then carry that scale into the re-encoding pass, which is why that pass uses a plain
            `.backward()`).
        autocast: a context manager factory for the forward passes, e.g. `accelerator.autocast`.
        model: the module `encode` runs; if given, its embedding tables get their gradient once for all
            micro-batches rather than once per micro-batch (`EmbeddingGradients`). Same result, less time.

    Returns:
        The detached loss.
    """
    random_states, cached = [], []
    with torch.no_grad():
        for batch in micro_batches:
            random_states.append(RandomState())
            with autocast():
                cached.append(encode(batch))
    representations = [torch.cat(parts).detach().requires_grad_() for parts in zip(*cached)]
    with autocast():
        loss = compute_loss(*representations)
    backward(loss)

    embeddings = EmbeddingGradients(model) if model is not None else None
    offset = 0
    for batch, random_state, parts in zip(micro_batches, random_states, cached):
        size = parts[0].shape[0]
        with random_state.replay(), autocast(), embeddings.cut() if embeddings else nullcontext():
            fresh = encode(batch)
        surrogate = sum(
            (rep * cached_rep.grad[offset : offset + size]).sum() for rep, cached_rep in zip(fresh, representations)
        )
        surrogate.backward()
        if embeddings:
            embeddings.collect()
        offset += size
    if embeddings:
        embeddings.write()
    return loss.detach()


def average_gradients_across_ranks(parameters) -> None:
    """Mean-reduce `.grad` over data-parallel ranks, for steps that bypass DDP's own gradient hooks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def feature_cached_step(
    accelerator,
    model: torch.nn.Module,
    micro_batches: Sequence[dict],
    encode: Callable[[dict], tuple[torch.Tensor, ...]],
    compute_loss: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """A training step's gradient over all `micro_batches` as one contrastive batch, under accelerate.

    `encode` must run the unwrapped `model`: the re-encoding passes bypass DDP's gradient hooks (they would
    synchronise once per micro-batch), so the gradients are averaged over ranks here, once. Returns the loss.

    Runs on one process and under DDP (`MULTI_GPU`, `MULTI_CPU`, ...); FSDP and DeepSpeed are refused: there each
    process holds a shard of the parameters, which the unwrapped model cannot run on.
    """
    sharding = getattr(accelerator, "distributed_type", None)
    if sharding in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise ValueError(
            f"Feature-cached accumulation over {len(micro_batches)} micro-batches (--gradient_accumulation_steps "
            f"{len(micro_batches)}) re-runs the unwrapped model, but under {sharding.value} each process holds only "
            "a shard of its parameters. Use --gradient_accumulation_steps 1 with a larger "
            "--per_device_train_batch_size (sharding frees the memory for it), or data parallelism: accelerate "
            "launch --config_file train/accelerate_configs/ddp_multi_gpu.yaml."
        )
    loss = feature_cached_backward(
        micro_batches, encode, compute_loss, backward=accelerator.backward, autocast=accelerator.autocast, model=model
    )
    average_gradients_across_ranks(model.parameters())
    return loss


__all__ = [
    "EmbeddingGradients",
    "RandomState",
    "average_gradients_across_ranks",
    "feature_cached_backward",
    "feature_cached_step",
]
