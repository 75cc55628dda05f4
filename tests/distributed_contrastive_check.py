"""Loss and gradient of one contrastive step, written to `argv[1]` (rank 0).

Run once as a plain process on the whole batch (the reference) and once under
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`, where every rank holds half of it;
`test_distributed.py` compares the two. Each run takes the step twice: through the DDP-wrapped model, and with
feature-cached accumulation over micro-batches of 2.

It also records, per rank, how many all-gathers one Matryoshka loss issues (and its loss and gradients) against the
former per-dimension computation, and finally whether rank 0 can run `forward` without `return_loss` while rank 1
takes part in no collective at all (evaluation on the main process). A collective waits at most `TIMEOUT`.
"""

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional_collectives
from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_vlp_config  # noqa: E402
from modeling import VLPModel  # noqa: E402
from modeling.modeling_contrastive import clip_loss, siglip_loss  # noqa: E402
from modeling.modeling_heads import matryoshka_prefixes  # noqa: E402
from train.grad_cache import average_gradients_across_ranks, feature_cached_backward  # noqa: E402

GLOBAL_BATCH = 8
MATRYOSHKA_DIMS = [32, 16, 8, 4]
TIMEOUT = timedelta(seconds=90)


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return dict(
        input_ids=torch.randint(5, 128, (GLOBAL_BATCH, 6), generator=generator),
        attention_mask=torch.ones(GLOBAL_BATCH, 6, dtype=torch.long),
        keypoints=torch.randn(GLOBAL_BATCH, 10, 21, 2, generator=generator, dtype=torch.float64),
        frame_features=torch.randn(GLOBAL_BATCH, 10, 8, generator=generator, dtype=torch.float64),
    )


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


class CountAllGathers:
    """Counts `all_gather_single` calls (the collective `gather_with_grad` issues) while active."""

    def __enter__(self):
        self.count, self.original = 0, functional_collectives.all_gather_single

        def counting(*args, **kwargs):
            self.count += 1
            return self.original(*args, **kwargs)

        functional_collectives.all_gather_single = counting
        return self

    def __exit__(self, *exc):
        functional_collectives.all_gather_single = self.original


def per_dimension_reference(model, visual, text, sentence_ids):
    """The Matryoshka loss as it was computed before: every dimension gathers its own normalised prefixes."""
    dims, weights = model.config.matryoshka_dims, torch.tensor(model.config.matryoshka_weights, dtype=visual.dtype)
    visual_prefixes, text_prefixes = matryoshka_prefixes(visual, dims), matryoshka_prefixes(text, dims)
    losses = []
    for dim in dims:
        if model.config.loss_type == "clip":
            losses.append(clip_loss(visual_prefixes[dim], text_prefixes[dim], model.logit_scale, sentence_ids)[0])
        else:
            losses.append(siglip_loss(
                visual_prefixes[dim], text_prefixes[dim], model.logit_scale, model.logit_bias, sentence_ids
            )[0])
    return (torch.stack(losses) * weights).sum() / weights.sum()


def matryoshka_gathers(rank: int) -> dict:
    """Loss, gradients and all-gather count of one Matryoshka loss with 4 dimensions, new and per-dimension."""
    results = {}
    for loss_type in ("clip", "siglip"):
        torch.manual_seed(0)
        config = tiny_vlp_config(vision_config=None, matryoshka_dims=MATRYOSHKA_DIMS, loss_type=loss_type)
        model = VLPModel(config).double()
        generator = torch.Generator().manual_seed(10 + rank)
        features = torch.randn(2, 4, 32, generator=generator, dtype=torch.float64)
        sentence_ids = torch.tensor([[0, 1, 1, 2], [3, 0, 4, 2]][rank])  # repeats within and across ranks
        for name, compute in (("gathered_once", lambda v, t: model.contrastive_loss(v, t, sentence_ids)[0]),
                              ("per_dimension", lambda v, t: per_dimension_reference(model, v, t, sentence_ids))):
            visual, text = (f.clone().requires_grad_() for f in features)
            model.zero_grad()
            with CountAllGathers() as counter:
                loss = compute(visual, text)
            loss.backward()
            results[f"{loss_type}/{name}"] = {
                "all_gathers": counter.count,
                "loss": loss.detach(),
                "grads": {"visual": visual.grad, "text": text.grad, "logit_scale": model.logit_scale.grad.clone()},
            }
    return results


def forward_on_rank_zero_alone(accelerator, model, batch, output: str) -> str:
    """Rank 0 runs `forward` without `return_loss` while rank 1 waits on a file store, outside any collective.
    A collective inside `forward` finds no partner and fails after the process group's timeout."""
    store = dist.FileStore(f"{output}.store", accelerator.num_processes)
    outcome = "ok"
    if accelerator.is_main_process:
        try:
            with torch.no_grad():
                model(**batch)
        except RuntimeError as error:
            outcome = f"forward failed: {str(error)[:300]}"
        store.set("rank0_forward", outcome)
    else:
        store.wait(["rank0_forward"], 2 * TIMEOUT)  # longer than rank 0's own timeout, so its outcome arrives
    return outcome


def main(output: str) -> None:
    accelerator = Accelerator(
        cpu=True,
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True),
            InitProcessGroupKwargs(timeout=TIMEOUT),
        ],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(0)
    model = VLPModel(tiny_vlp_config(vision_config=None)).double().eval()
    local = {k: v.chunk(world)[rank] for k, v in global_batch().items()}
    ddp_model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(ddp_model)

    loss = ddp_model(**local, return_loss=True).loss
    accelerator.backward(loss)
    plain = {"loss": accelerator.reduce(loss.detach(), "mean"), "grads": gradients(unwrapped)}
    unwrapped.zero_grad()

    micro_batches = [{k: v[i : i + 2] for k, v in local.items()} for i in range(0, len(local["input_ids"]), 2)]

    def encode(batch):
        visual = unwrapped.get_visual_features(keypoints=batch["keypoints"], frame_features=batch["frame_features"])
        return visual, unwrapped.get_text_features(batch["input_ids"], batch["attention_mask"])

    loss = feature_cached_backward(micro_batches, encode, lambda v, t: unwrapped.contrastive_loss(v, t)[0], model=unwrapped)
    average_gradients_across_ranks(unwrapped.parameters())
    cached = {"loss": accelerator.reduce(loss, "mean"), "grads": gradients(unwrapped)}

    gathers = rank0_alone = None
    if world > 1:
        gathers = [None] * world
        dist.all_gather_object(gathers, matryoshka_gathers(rank))
        rank0_alone = forward_on_rank_zero_alone(accelerator, unwrapped, local, output)
    if accelerator.is_main_process:
        torch.save(
            {"world_size": world, "plain": plain, "cached": cached, "matryoshka": gathers, "rank0_alone": rank0_alone},
            output,
        )


if __name__ == "__main__":
    main(sys.argv[1])
