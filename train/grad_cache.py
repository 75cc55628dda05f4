"""Gradient accumulation that adds negatives: feature caching in the style of GradCache (Gao et al., 2021).

Plain accumulation of k micro-batches of m only ever contrasts m samples with each other. Here the
representations of all k×m samples are computed first without a graph, the loss is taken on that whole cached
batch (so every sample is a negative for every other), its gradient with respect to each representation is kept,
and each micro-batch is then re-encoded with a graph and back-propagated with `(representation * cached_grad).sum()`.
The parameter gradient is exactly that of one k×m batch, for about twice the compute of a plain step and the
activation memory of one micro-batch. The random state is replayed so that dropout masks match between passes.
"""

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist


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


def feature_cached_backward(
    micro_batches: Sequence[dict],
    encode: Callable[[dict], tuple[torch.Tensor, ...]],
    compute_loss: Callable[..., torch.Tensor],
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    autocast: Callable = nullcontext,
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

    offset = 0
    for batch, random_state, parts in zip(micro_batches, random_states, cached):
        size = parts[0].shape[0]
        with random_state.replay(), autocast():
            fresh = encode(batch)
        surrogate = sum(
            (rep * cached_rep.grad[offset : offset + size]).sum() for rep, cached_rep in zip(fresh, representations)
        )
        surrogate.backward()
        offset += size
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
    """
    loss = feature_cached_backward(
        micro_batches, encode, compute_loss, backward=accelerator.backward, autocast=accelerator.autocast
    )
    average_gradients_across_ranks(model.parameters())
    return loss


__all__ = ["RandomState", "average_gradients_across_ranks", "feature_cached_backward", "feature_cached_step"]
