"""Contrastive losses shared by all models, distributed-aware in the style of open_clip's `loss.py`.

Every rank scores its own rows against the embeddings of *all* ranks (gathered with gradient), with labels
offset by `rank * local_batch`. For the CLIP and SigLIP losses the mean of the per-rank losses then equals the loss
on the concatenated global batch, and after DDP's gradient averaging so does the gradient: every sample is a
negative for every other. SupCon averages over each rank's anchors that have a positive, so its mean over ranks
matches the global loss only when every rank has as many such anchors.
"""

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional_collectives
from torch import nn


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate `features` from all ranks along dim 0; gradients flow back to the rank that produced each row.

    torch's autograd-aware gather (`all_gather_single`; the `torch.distributed.nn.functional.all_gather` it replaces
    is deprecated): one collective into one tensor, whose backward reduce-scatters the gradient.
    """
    _, world_size = _world()
    if world_size == 1:
        return features
    return functional_collectives.all_gather_single(features, 0, dist.group.WORLD)


def _local_labels(local_batch: int, device: torch.device) -> torch.Tensor:
    rank, _ = _world()
    return torch.arange(local_batch, device=device) + rank * local_batch


def clip_loss(
    visual_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    all_visual_embeds: torch.Tensor | None = None,
    all_text_embeds: torch.Tensor | None = None,
    all_group_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE on L2-normalised embeddings; `logit_scale` is the log temperature.

    `group_ids` marks rows that share one text (several clips of a sentence, two views of a clip): their columns are
    all correct answers, with the target probability spread evenly over them, instead of false negatives.

    The columns are the embeddings of all ranks, in rank order. A caller that scores several views of the same
    features (Matryoshka prefixes) gathers them once with `gather_with_grad` and passes `all_*`; each one left out is
    gathered here from its local counterpart.

    Returns `(loss, logits_per_visual, logits_per_text)` for the local rows against all gathered columns.
    """
    all_visual = gather_with_grad(visual_embeds) if all_visual_embeds is None else all_visual_embeds
    all_text = gather_with_grad(text_embeds) if all_text_embeds is None else all_text_embeds
    scale = logit_scale.exp()
    logits_per_visual = scale * visual_embeds @ all_text.T
    logits_per_text = scale * text_embeds @ all_visual.T
    if group_ids is None:
        targets = _local_labels(visual_embeds.shape[0], visual_embeds.device)
    else:
        all_groups = gather_with_grad(group_ids) if all_group_ids is None else all_group_ids
        same_group = (group_ids[:, None] == all_groups[None, :]).to(logits_per_visual.dtype)
        targets = same_group / same_group.sum(dim=1, keepdim=True)
    loss = (
        nn.functional.cross_entropy(logits_per_visual, targets) + nn.functional.cross_entropy(logits_per_text, targets)
    ) / 2
    return loss, logits_per_visual, logits_per_text


def siglip_loss(
    visual_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    all_visual_embeds: torch.Tensor | None = None,
    all_text_embeds: torch.Tensor | None = None,
    all_group_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SigLIP's pairwise sigmoid loss: every (visual, text) pair is an independent binary decision.

    With `group_ids`, every pair within a group is a positive (as in `clip_loss`). Normalised by the local batch size
    as in the paper, so the mean over ranks is the global-batch loss. `all_*` are pre-gathered columns, as in
    `clip_loss`.
    """
    all_visual = gather_with_grad(visual_embeds) if all_visual_embeds is None else all_visual_embeds
    all_text = gather_with_grad(text_embeds) if all_text_embeds is None else all_text_embeds
    scale = logit_scale.exp()
    logits_per_visual = scale * visual_embeds @ all_text.T + logit_bias
    logits_per_text = scale * text_embeds @ all_visual.T + logit_bias
    if group_ids is None:
        labels = _local_labels(visual_embeds.shape[0], visual_embeds.device)
        is_positive = torch.zeros_like(logits_per_visual, dtype=torch.bool)
        is_positive[torch.arange(labels.shape[0], device=labels.device), labels] = True
    else:
        all_groups = gather_with_grad(group_ids) if all_group_ids is None else all_group_ids
        is_positive = group_ids[:, None] == all_groups[None, :]
    signs = is_positive.to(logits_per_visual.dtype) * 2 - 1
    loss = -nn.functional.logsigmoid(signs * logits_per_visual).sum() / visual_embeds.shape[0]
    return loss, logits_per_visual, logits_per_text


def supervised_contrastive_loss(
    embeds: torch.Tensor,
    group_ids: torch.Tensor,
    temperature: float = 0.05,
    memory: "EmbeddingMemory | None" = None,
) -> torch.Tensor:
    """SupCon (Khosla et al. 2020): rows sharing a `group_id` are positives for each other.

    `embeds` must be L2-normalised. Anchors without any positive are left out of the mean. A `memory` of past
    batches adds its rows as further candidates (positives or negatives by group), without gradient.
    """
    all_embeds, all_groups = gather_with_grad(embeds), gather_with_grad(group_ids)
    if memory is not None and memory.num_filled:
        all_embeds = torch.cat([all_embeds, memory.embeds[: memory.num_filled].to(embeds.dtype)])
        all_groups = torch.cat([all_groups, memory.group_ids[: memory.num_filled]])
    rank, _ = _world()
    local_index = torch.arange(embeds.shape[0], device=embeds.device) + rank * embeds.shape[0]
    logits = embeds @ all_embeds.T / temperature
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[torch.arange(embeds.shape[0], device=embeds.device), local_index] = False
    positives = (group_ids[:, None] == all_groups[None, :]) & not_self
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    num_positives = positives.sum(dim=1)
    has_positive = num_positives > 0
    if not has_positive.any():
        return logits.sum() * 0.0
    mean_log_prob_pos = (log_prob * positives).sum(dim=1)[has_positive] / num_positives[has_positive]
    return -mean_log_prob_pos.mean()


class EmbeddingMemory(nn.Module):
    """A first-in-first-out store of past embeddings and their group ids: more negatives (and positives) for SupCon
    than a small batch holds, as MoCo's queue and cross-batch memory (XBM) provide.

    There is no momentum encoder: stored rows come from recent steps of the model itself, which drift slowly once
    training has settled. The buffers are not saved with the model; they are training state only.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"EmbeddingMemory needs a size of at least 1, got {size}.")
        self.register_buffer("embeds", torch.zeros(size, dim), persistent=False)
        self.register_buffer("group_ids", torch.full((size,), -1, dtype=torch.long), persistent=False)
        self.next_slot = 0
        self.num_filled = 0

    @torch.no_grad()
    def push(self, embeds: torch.Tensor, group_ids: torch.Tensor) -> None:
        """Store this step's rows from every rank, overwriting the oldest ones."""
        embeds, group_ids = gather_with_grad(embeds.detach()), gather_with_grad(group_ids)
        size = self.embeds.shape[0]
        embeds, group_ids = embeds[-size:], group_ids[-size:]
        slots = (self.next_slot + torch.arange(embeds.shape[0], device=self.embeds.device)) % size
        self.embeds[slots] = embeds.to(self.embeds.dtype)
        self.group_ids[slots] = group_ids
        self.next_slot = (self.next_slot + embeds.shape[0]) % size
        self.num_filled = min(self.num_filled + embeds.shape[0], size)


__all__ = ["EmbeddingMemory", "clip_loss", "gather_with_grad", "siglip_loss", "supervised_contrastive_loss"]
