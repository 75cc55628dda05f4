"""LoRA through peft on the top layers of chosen towers: targets, freezing, training, adapter and merged checkpoints."""

import copy
import json
import os

import pytest
import torch
from conftest import tiny_vlp_config
from fresh_process import run_outside_project
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from torch import nn
from transformers import BertModel, CLIPVisionModel, DistilBertConfig, DistilBertModel, T5Config, T5Model

from hub import save_for_hub
from modeling import VLPModel
from processing import VLPProcessor
from train.backbones import load_image_processor, load_tokenizer, tiny_text_config, tiny_vision_config
from train.lora import apply_lora, find_layer_stack, load_lora, lora_target_modules, merge_lora

HEADS = ["pooling", "visual_projection", "text_projection"]
BERT_LINEARS = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
CLIP_LINEARS = ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]

LOAD_SCRIPT = """
import torch
from transformers import AutoModel

checkpoint, inputs_path, output_path = sys.argv[1:]
model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
with torch.no_grad():
    outputs = model(**torch.load(inputs_path), return_loss=False)
torch.save(
    {
        "class": type(model).__module__ + "." + type(model).__name__,
        "visual_embeds": outputs.visual_embeds,
        "text_embeds": outputs.text_embeds,
    },
    output_path,
)
"""


def lora_config():
    """Three text layers and two vision layers, so that "the top k" is a strict subset of each tower."""
    return tiny_vlp_config(
        text_config=tiny_text_config(vocab_size=128, hidden_size=32, num_layers=3),
        vision_config=tiny_vision_config(image_size=32, patch_size=8, hidden_size=32, num_layers=2),
    )


def image_batch(batch_size=8):
    return dict(input_ids=torch.randint(5, 128, (batch_size, 6)), pixel_values=torch.randn(batch_size, 3, 32, 32))


def base_name(peft_name: str) -> str:
    """The name a frozen parameter of the wrapped model had before peft put its wrappers around it."""
    return peft_name.replace(".base_layer", "").replace(".original_module", "")


def tiny_t5(num_decoder_layers: int) -> T5Model:
    return T5Model(
        T5Config(
            vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_heads=2, num_layers=2, num_decoder_layers=num_decoder_layers
        )
    )


@pytest.mark.parametrize(
    "build, expected_name, expected_length",
    [
        (lambda: BertModel(tiny_text_config(vocab_size=128, hidden_size=32, num_layers=3)), "encoder.layer", 3),
        (
            lambda: DistilBertModel(DistilBertConfig(vocab_size=128, dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
            "transformer.layer",
            2,
        ),
        (lambda: CLIPVisionModel(tiny_vision_config(32, 8, 32, num_layers=2)), "encoder.layers", 2),
        # the decoder stack is the longer one; the mixed sub-layer lists inside a T5 block are not stacks
        (lambda: tiny_t5(num_decoder_layers=3), "decoder.block", 3),
        (
            lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 2, enable_nested_tensor=False),
            "layers",
            2,
        ),
        (lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 2, 32), 4), "layers", 4),
    ],
    ids=["bert", "distilbert", "clip-vision", "t5", "torch-encoder", "torch-decoder"],
)
def test_find_layer_stack(build, expected_name, expected_length):
    module = build()
    name, stack = find_layer_stack(module)
    assert (name, len(stack)) == (expected_name, expected_length)
    assert stack is module.get_submodule(expected_name)


def test_find_layer_stack_errors():
    with pytest.raises(ValueError, match="Linear has no nn.ModuleList of identical layers"):
        find_layer_stack(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"several layer stacks of 2 layers \(encoder.block, decoder.block\)"):
        find_layer_stack(tiny_t5(num_decoder_layers=2))


def test_top_k_targets_are_the_linears_of_the_last_layers():
    model = VLPModel(lora_config())
    targets = lora_target_modules(model, {"text_model": 2, "vision_model": 1})
    expected = [f"text_model.encoder.layer.{i}.{name}" for i in (1, 2) for name in BERT_LINEARS]
    expected += [f"vision_model.encoder.layers.1.{name}" for name in CLIP_LINEARS]
    assert sorted(targets) == sorted(expected)
    assert all(type(model.get_submodule(name)) is nn.Linear for name in targets)


def test_first_layer_counts_from_the_bottom():
    model = VLPModel(lora_config())
    assert lora_target_modules(model, {}, first_layer={"text_model": 1}) == lora_target_modules(
        model, {"text_model": 2}
    )
    everything = lora_target_modules(model, {}, first_layer={"text_model": 0})
    assert {name.split(".")[3] for name in everything} == {"0", "1", "2"} and len(everything) == 3 * len(BERT_LINEARS)
    mixed = lora_target_modules(model, {"vision_model": 1}, first_layer={"text_model": 2})
    assert sorted(mixed) == sorted(lora_target_modules(model, {"vision_model": 1, "text_model": 1}))


def test_torch_attention_is_targeted_whole():
    """peft can only adapt nn.MultiheadAttention as one module: its forward never calls `out_proj`."""
    model = VLPModel(lora_config())
    assert lora_target_modules(model, {"sequence_encoder": 1}) == [
        "sequence_encoder.layers.layers.0.self_attn",
        "sequence_encoder.layers.layers.0.linear1",
        "sequence_encoder.layers.layers.0.linear2",
    ]


class NormOnlyTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.LayerNorm(4) for _ in range(2))


@pytest.mark.parametrize(
    "towers, first_layer, message",
    [
        ({"audio_model": 1}, None, "VLPModel has no tower 'audio_model'.*sub-modules are: vision_model"),
        ({"text_model": 4}, None, r"towers\['text_model'\] is 4 but text_model has 3 layers; pass 1 to 3"),
        ({"text_model": 0}, None, r"towers\['text_model'\] is 0 but text_model has 3 layers"),
        ({}, {"text_model": 3}, r"first_layer\['text_model'\] is 3 .* \(indices 0 to 2\)"),
        ({"text_model": 1}, {"text_model": 0}, r"Towers \['text_model'\] are in both"),
        ({}, None, "Name at least one tower"),
        ({"norm_tower": 1}, None, r"Layer 1 of norm_tower.layers \(LayerNorm\) has no nn.Linear"),
    ],
)
def test_target_errors(towers, first_layer, message):
    model = VLPModel(lora_config())
    model.norm_tower = NormOnlyTower()
    with pytest.raises(ValueError, match=message):
        lora_target_modules(model, towers, first_layer)


def test_missing_tower_and_bad_arguments():
    without_images = VLPModel(tiny_vlp_config(vision_config=None))
    with pytest.raises(ValueError, match="no tower 'vision_model' \\(it is missing or None\\)"):
        apply_lora(without_images, {"vision_model": 1})
    with pytest.raises(ValueError, match="modules_to_save names 'poolng', which is not a sub-module of VLPModel"):
        apply_lora(without_images, {"text_model": 1}, modules_to_save=["poolng"])
    with pytest.raises(TypeError, match="merge_lora expects a PeftModel"):
        merge_lora(without_images)


def test_load_lora_needs_an_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no adapter_config.json"):
        load_lora(VLPModel(tiny_vlp_config()), tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """LoRA on the top 2 text layers and the top vision layer, heads trainable, 20 AdamW steps on one batch."""
    torch.manual_seed(0)
    base_dir = tmp_path_factory.mktemp("base")
    model = VLPModel(lora_config())
    model.save_pretrained(base_dir)
    frozen = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    peft_model = apply_lora(model, {"text_model": 2, "vision_model": 1}, modules_to_save=HEADS)
    initial = {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    batch = image_batch()
    losses = []
    for _ in range(20):
        loss = peft_model(**batch, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    peft_model.eval()
    adapter_dir = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(adapter_dir)
    return dict(
        peft_model=peft_model,
        base_dir=base_dir,
        adapter_dir=adapter_dir,
        frozen=frozen,
        initial=initial,
        losses=losses,
        batch=batch,
    )


def test_get_peft_model_without_task_type_wraps_the_model(trained):
    peft_model = trained["peft_model"]
    assert type(peft_model) is PeftModel and peft_model.peft_config["default"].task_type is None
    assert type(peft_model.get_base_model()) is VLPModel


def test_only_lora_and_heads_are_trainable(trained):
    peft_model = trained["peft_model"]
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    lora = [name for name in trainable if ".lora_A." in name or ".lora_B." in name]
    heads = [name for name in trainable if ".modules_to_save.default." in name]
    assert sorted(lora + heads) == sorted(trainable)
    targets = lora_target_modules(VLPModel(lora_config()), {"text_model": 2, "vision_model": 1})
    assert {name.removeprefix("base_model.model.").partition(".lora_")[0] for name in lora} == set(targets)
    assert len(lora) == 2 * len(targets)  # one A and one B matrix per adapted Linear
    assert {name.removeprefix("base_model.model.").partition(".")[0] for name in heads} == set(HEADS)
    assert not peft_model.get_base_model().logit_scale.requires_grad


def test_training_moves_lora_and_leaves_base_weights_bit_identical(trained):
    peft_model, frozen = trained["peft_model"], trained["frozen"]
    trainable = dict(peft_model.named_parameters())
    assert all(torch.count_nonzero(trainable[name]) for name in trained["initial"] if ".lora_B." in name)
    assert all(not torch.equal(trainable[name], before) for name, before in trained["initial"].items())

    base_parameters = {
        base_name(name): p
        for name, p in peft_model.get_base_model().named_parameters()
        if ".lora_" not in name and ".modules_to_save." not in name
    }
    assert base_parameters.keys() == frozen.keys()
    changed = [name for name, p in base_parameters.items() if not torch.equal(p, frozen[name])]
    assert changed == []


def test_loss_falls_on_a_fixed_batch(trained):
    losses = trained["losses"]
    assert losses[-1] < 0.25 * losses[0], losses


def test_adapter_round_trip(trained):
    adapter_dir = trained["adapter_dir"]
    assert sorted(os.listdir(adapter_dir)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["modules_to_save"] == HEADS
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as adapter:
        saved = {name: adapter.get_slice(name).get_shape() for name in adapter.keys()}
    assert all(".lora_" in name or name.split(".")[2] in HEADS for name in saved)
    trainable = sum(p.numel() for p in trained["peft_model"].parameters() if p.requires_grad)
    assert sum(torch.Size(shape).numel() for shape in saved.values()) == trainable

    fresh_base = VLPModel.from_pretrained(trained["base_dir"])
    loaded = load_lora(fresh_base, adapter_dir).eval()
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference unless is_trainable
    with torch.no_grad():
        expected = trained["peft_model"](**trained["batch"])
        actual = loaded(**trained["batch"])
    assert torch.allclose(actual.visual_embeds, expected.visual_embeds, atol=1e-6)
    assert torch.allclose(actual.text_embeds, expected.text_embeds, atol=1e-6)


def test_merged_model_matches_and_reloads_through_the_hub_bundle(trained, tmp_path):
    peft_model, batch = trained["peft_model"], trained["batch"]
    merged = merge_lora(copy.deepcopy(peft_model)).eval()
    assert type(merged) is VLPModel
    assert not any(isinstance(module, BaseTunerLayer) for module in merged.modules())
    assert merged.state_dict().keys() == VLPModel(lora_config()).state_dict().keys()
    with torch.no_grad():
        expected = peft_model(**batch)
        outputs = merged(**batch, return_loss=False)
    assert torch.allclose(outputs.visual_embeds, expected.visual_embeds, atol=1e-5)
    assert torch.allclose(outputs.text_embeds, expected.text_embeds, atol=1e-5)

    sequence = merged.config.sequence_config
    processor = VLPProcessor(
        image_processor=load_image_processor(image_size=32),
        tokenizer=load_tokenizer(),
        max_frames=sequence.max_frames,
        feature_dim=sequence.feature_dim,
    )
    checkpoint = save_for_hub(merged, processor, tmp_path / "merged")
    inputs_path, output_path = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save(batch, inputs_path)
    run_outside_project(LOAD_SCRIPT, [checkpoint, inputs_path, output_path], tmp_path)
    loaded = torch.load(output_path)
    assert loaded["class"].startswith("transformers_modules.") and loaded["class"].endswith("modeling_vlp.VLPModel")
    assert torch.allclose(loaded["visual_embeds"], outputs.visual_embeds, atol=1e-6)
    assert torch.allclose(loaded["text_embeds"], outputs.text_embeds, atol=1e-6)


def test_lora_on_a_torch_transformer_tower(tmp_path):
    """nn.TransformerEncoderLayer has a fused inference path that reads raw weights and would skip LoRA."""
    model = VLPModel(lora_config())
    base = copy.deepcopy(model).eval()
    peft_model = apply_lora(model, {}, first_layer={"sequence_encoder": 0})
    clips = dict(frame_features=torch.randn(4, 12, 8))

    peft_model.get_visual_features(**clips).sum().backward()
    attention = peft_model.get_base_model().sequence_encoder.layers.layers[0].self_attn
    assert torch.count_nonzero(attention.lora_B["default"].weight.grad)  # in_proj
    assert torch.count_nonzero(attention.base_layer.out_proj.lora_B["default"].weight.grad)

    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(std=0.5)  # stands in for training
    peft_model.eval()
    peft_model.save_pretrained(tmp_path)
    with torch.no_grad():
        adapted = peft_model.get_visual_features(**clips)
        reloaded = load_lora(copy.deepcopy(base), tmp_path).get_visual_features(**clips)
        merged = merge_lora(peft_model).get_visual_features(**clips)
        unadapted = base.get_visual_features(**clips)
    assert (nn.functional.normalize(adapted, dim=-1) - nn.functional.normalize(unadapted, dim=-1)).abs().max() > 0.1
    assert torch.allclose(adapted, merged, atol=1e-5)
    assert torch.allclose(reloaded, merged, atol=1e-5)
