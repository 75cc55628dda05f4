"""LoRA on the top layers of chosen towers, through `peft`, for every model in the repository.

Fine-tuning only the last layers of a pretrained tower keeps its general low-level features and adapts the
task-specific top, at a fraction of the trainable parameters. The layers are found structurally (the tower's
repeated-block list), so the same call works for BERT, CLIP/SigLIP vision, T5/BART decoders and torch
`nn.TransformerEncoder` towers without per-architecture module-name tables.
"""

import os
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D


def find_layer_stack(module: nn.Module) -> tuple[str, nn.ModuleList]:
    """
    The repeated transformer-layer list of a backbone and its dotted name inside `module`.

    That is the longest `nn.ModuleList` whose children all share one class (`encoder.layer` in BERT, `encoder.layers`
    in CLIP, `block` in T5, `layers` in `nn.TransformerEncoder`): lists of mixed modules, such as the sub-layers of a
    T5 block, are not layer stacks. Raises `ValueError` when there is none, or when two lists tie (a whole
    encoder-decoder model: pass the encoder or decoder itself).
    """
    stacks = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, nn.ModuleList) and len(child) > 0 and len({type(layer) for layer in child}) == 1
    ]
    if not stacks:
        raise ValueError(
            f"{type(module).__name__} has no nn.ModuleList of identical layers; pass the transformer tower itself "
            "(e.g. a BERT, CLIP vision or T5 stack)."
        )
    longest = max(len(stack) for _, stack in stacks)
    candidates = [(name, stack) for name, stack in stacks if len(stack) == longest]
    if len(candidates) > 1:
        raise ValueError(
            f"{type(module).__name__} has several layer stacks of {longest} layers "
            f"({', '.join(name for name, _ in candidates)}); pass the sub-module that holds the one to adapt."
        )
    return candidates[0]


def _adaptable_modules(layer: nn.Module) -> list[str]:
    """Names (relative to `layer`) of the modules peft can put LoRA on: every `nn.Linear` and transformers' `Conv1D`
    (GPT-2's projections; peft transposes them), except that an `nn.MultiheadAttention` is targeted whole, because its
    forward reads the projection weights directly and a LoRA wrapped around its `out_proj` would never run."""
    attention_blocks = [module for module in layer.modules() if isinstance(module, nn.MultiheadAttention)]
    inside_attention = {module for block in attention_blocks for module in block.modules() if module is not block}
    return [
        name
        for name, module in layer.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        or (isinstance(module, (nn.Linear, Conv1D)) and module not in inside_attention)
    ]


def _tower(model: nn.Module, tower: str) -> nn.Module:
    try:
        return model.get_submodule(tower)
    except AttributeError:
        children = ", ".join(name for name, _ in model.named_children())
        raise ValueError(
            f"{type(model).__name__} has no tower {tower!r} (it is missing or None); its sub-modules are: {children}."
        ) from None


def lora_target_modules(
    model: nn.Module, towers: dict[str, int], first_layer: dict[str, int] | None = None
) -> list[str]:
    """
    Full dotted names, inside `model`, of the modules LoRA should adapt: those of the top layers of each tower.

    Args:
        model: the model that `apply_lora` will wrap.
        towers: `{tower attribute: k}` adapts the last `k` layers of that tower, e.g.
            `{"text_model": 2, "vision_model": 1}`. Dotted attributes (`"model.decoder"`) reach nested towers.
        first_layer: `{tower attribute: i}` adapts the layers from index `i` upward (0 is the first layer), e.g.
            a decoder from a chosen depth. A tower goes in `towers` or in `first_layer`, not both.

    Exact names rather than a pattern: peft then adapts these modules and nothing else, whatever other modules
    share their short names (`query`, `fc1`) elsewhere in the model.
    """
    first_layer = first_layer or {}
    if not towers and not first_layer:
        raise ValueError("Name at least one tower, e.g. towers={'text_model': 2}.")
    if both := sorted(towers.keys() & first_layer.keys()):
        raise ValueError(f"Towers {both} are in both `towers` and `first_layer`; give each tower one range.")

    targets = []
    for tower_name in [*towers, *first_layer]:
        stack_name, stack = find_layer_stack(_tower(model, tower_name))
        num_layers = len(stack)
        if tower_name in towers:
            top_k = towers[tower_name]
            if not 1 <= top_k <= num_layers:
                raise ValueError(
                    f"towers[{tower_name!r}] is {top_k} but {tower_name} has {num_layers} layers; "
                    f"pass 1 to {num_layers}."
                )
            start = num_layers - top_k
        else:
            start = first_layer[tower_name]
            if not 0 <= start < num_layers:
                raise ValueError(
                    f"first_layer[{tower_name!r}] is {start} but {tower_name} has {num_layers} layers "
                    f"(indices 0 to {num_layers - 1})."
                )
        for index in range(start, num_layers):
            names = _adaptable_modules(stack[index])
            if not names:
                raise ValueError(
                    f"Layer {index} of {tower_name}.{stack_name} ({type(stack[index]).__name__}) has no nn.Linear, "
                    "Conv1D or nn.MultiheadAttention for LoRA to adapt."
                )
            prefix = ".".join(part for part in (tower_name, stack_name, str(index)) if part)
            targets += [f"{prefix}.{name}" if name else prefix for name in names]
    return targets


def _run_unfused(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that changes nothing: its presence keeps torch off a fused path that would skip LoRA."""


def _keep_adapted_torch_layers_unfused(model: nn.Module) -> None:
    """In eval mode without grad, `nn.TransformerEncoderLayer` runs one fused kernel on its raw weight tensors,
    bypassing the LoRA wrappers around its linears and attention; torch skips that path for a layer with hooks.
    The hooks outlive `merge_lora` in this process, which costs the merged model the fused kernel, not accuracy."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and any(
            isinstance(child, BaseTunerLayer) for child in module.modules()
        ):
            module.register_forward_pre_hook(_run_unfused)


def apply_lora(
    model: PreTrainedModel,
    towers: dict[str, int],
    *,
    first_layer: dict[str, int] | None = None,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """
    Wrap `model` in a `PeftModel` with LoRA on the top layers of `towers` (see `lora_target_modules`).

    peft freezes every base weight; only the LoRA matrices and trainable copies of `modules_to_save` (names of
    sub-modules, e.g. the VLP heads `["pooling", "visual_projection", "text_projection"]`) are trained and saved in
    the adapter. Bare parameters, such as the VLP `logit_scale`, are not modules and stay frozen. No `task_type` is
    set, so any `PreTrainedModel` works and `forward` passes its keyword arguments through unchanged.
    """
    module_names = [name for name, _ in model.named_modules()]
    for wanted in modules_to_save or []:
        if not any(name == wanted or name.endswith(f".{wanted}") for name in module_names):
            raise ValueError(f"modules_to_save names {wanted!r}, which is not a sub-module of {type(model).__name__}.")
    targets = lora_target_modules(model, towers, first_layer)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        # Conv1D (GPT-2) stores its weight transposed; peft fixes the flag per module anyway, this spares its warnings.
        fan_in_fan_out=all(isinstance(model.get_submodule(name), Conv1D) for name in targets),
    )
    peft_model = get_peft_model(model, config)
    _keep_adapted_torch_layers_unfused(peft_model)
    return peft_model


def load_lora(model: PreTrainedModel, adapter_dir: str | os.PathLike, *, is_trainable: bool = False) -> PeftModel:
    """`PeftModel.from_pretrained(model, adapter_dir)` on a local adapter folder (written by `save_pretrained` of an
    `apply_lora` model), with the same torch-layer safeguard as `apply_lora`."""
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} holds no adapter_config.json; pass a folder written by peft_model.save_pretrained."
        )
    peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)
    _keep_adapted_torch_layers_unfused(peft_model)
    return peft_model


def merge_lora(peft_model: PeftModel) -> PreTrainedModel:
    """Fold the LoRA updates into the base weights and drop the wrappers: a plain model that `save_pretrained`,
    `hub.save_for_hub` and inference use like any other, with no peft dependency at load time."""
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"merge_lora expects a PeftModel (from apply_lora), got {type(peft_model).__name__}.")
    return peft_model.merge_and_unload()


__all__ = ["apply_lora", "find_layer_stack", "load_lora", "lora_target_modules", "merge_lora"]
