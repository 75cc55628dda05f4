"""Loss and gradient of one contrastive step, written to `argv[1]` (rank 0).

Run once as a plain process on the whole batch (the reference) and once under
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`, where every rank holds half of it;
`test_distributed.py` compares the two. Each run takes the step twice: through the DDP-wrapped model, and with
feature-cached accumulation over micro-batches of 2.
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_vlp_config  # noqa: E402
from modeling import VLPModel  # noqa: E402
from train.grad_cache import average_gradients_across_ranks, feature_cached_backward  # noqa: E402

GLOBAL_BATCH = 8


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


def main(output: str) -> None:
    accelerator = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(0)
    model = VLPModel(tiny_vlp_config(vision_config=None)).double().eval()
    local = {k: v.chunk(world)[rank] for k, v in global_batch().items()}
    ddp_model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(ddp_model)

    loss = ddp_model(**local).loss
    accelerator.backward(loss)
    plain = {"loss": accelerator.reduce(loss.detach(), "mean"), "grads": gradients(unwrapped)}
    unwrapped.zero_grad()

    micro_batches = [{k: v[i : i + 2] for k, v in local.items()} for i in range(0, len(local["input_ids"]), 2)]

    def encode(batch):
        visual = unwrapped.get_visual_features(keypoints=batch["keypoints"], frame_features=batch["frame_features"])
        return visual, unwrapped.get_text_features(batch["input_ids"], batch["attention_mask"])

    loss = feature_cached_backward(micro_batches, encode, lambda v, t: unwrapped.contrastive_loss(v, t)[0])
    average_gradients_across_ranks(unwrapped.parameters())
    cached = {"loss": accelerator.reduce(loss, "mean"), "grads": gradients(unwrapped)}
    if accelerator.is_main_process:
        torch.save({"world_size": world, "plain": plain, "cached": cached}, output)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
