"""Multimodal-CoT T5: the fusion formula, generation with vision, the two-stage call, answer parsing, LoRA, loading."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from configuration import MMCoTConfig
from data.synthetic_scienceqa import make_scienceqa_problems
from fresh_process import run_outside_project
from hub import save_for_hub
from modeling import MMCoTForConditionalGeneration
from modeling.modeling_mmcot import MMCoTGatedFusion
from processing import MMCoTProcessor
from processing.processing_mmcot import format_prompt, format_target, parse_answer
from processing.tokenization_mmcot import train_unigram_tokenizer
from train.backbones import load_image_processor, tiny_vision_config
from train.lora import apply_lora, merge_lora

IMAGE_SIZE = 32
T5_SIZES = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, dropout_rate=0.0)


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    """Embedded problems with images as `load_scienceqa` rows hold them (PIL image or None)."""
    generated, _, images = make_scienceqa_problems({"train": 40}, seed=0, image_size=IMAGE_SIZE)
    return [{**problem, "pid": pid, "image": images.get(pid)} for pid, problem in generated.items()]


@pytest.fixture(scope="module")
def tokenizer(problems):
    texts = [format_prompt(p, "answer", format_target(p, "rationale")) for p in problems] + [format_target(p, "answer") for p in problems]
    return train_unigram_tokenizer(texts, vocab_size=200)


def tiny_config(tokenizer, **overrides) -> MMCoTConfig:
    defaults = dict(
        text_config={**T5_SIZES, "vocab_size": len(tokenizer), "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1},
        vision_config=tiny_vision_config(image_size=IMAGE_SIZE, patch_size=16, hidden_size=32, num_layers=1),
        max_rationale_tokens=12,
        max_answer_tokens=8,
    )
    return MMCoTConfig(**(defaults | overrides))


@pytest.fixture(scope="module")
def processor(tokenizer) -> MMCoTProcessor:
    return MMCoTProcessor(load_image_processor(None, IMAGE_SIZE), tokenizer)


@pytest.fixture(scope="module")
def model(tokenizer) -> MMCoTForConditionalGeneration:
    torch.manual_seed(0)
    return MMCoTForConditionalGeneration(tiny_config(tokenizer)).eval()


def with_and_without_image(problems: list[dict], count: int = 4) -> list[dict]:
    image = [p for p in problems if p["image"] is not None]
    plain = [p for p in problems if p["image"] is None]
    return image[: count // 2] + plain[: count - count // 2]


# -- fusion -----------------------------------------------------------------------------------------------------------
def test_fusion_equals_the_formula_on_a_hand_built_case():
    """d = 2, d_v = 1, one vision token kept and one masked; weights set by hand so the numbers can be followed:
    the projection maps v to (v, -v), attention keys/values/output are the identity, the gate weighs the text by 1
    and the attended vision by 2. The masked token (value 100) must change nothing; the problem without an image
    attends to nothing, so h_attn = 0 there."""
    fusion = MMCoTGatedFusion(hidden_size=2, vision_hidden_size=1)
    with torch.no_grad():
        fusion.vision_projection.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        fusion.vision_projection.bias.zero_()
        fusion.attention.in_proj_weight.copy_(torch.eye(2).repeat(3, 1))
        fusion.attention.in_proj_bias.zero_()
        fusion.attention.out_proj.weight.copy_(torch.eye(2))
        fusion.attention.out_proj.bias.zero_()
        fusion.gate.weight.copy_(torch.cat([torch.eye(2), 2 * torch.eye(2)], dim=1))
        fusion.gate.bias.fill_(-1.0)
    h = torch.tensor([[[0.5, -1.0]], [[2.0, 0.0]]])  # (batch 2, one text token, d 2)
    v = torch.tensor([[[3.0], [100.0]], [[1.0], [1.0]]])  # (batch 2, two vision tokens, d_v 1)
    mask = torch.tensor([[True, False], [False, False]])
    fused, gate = fusion(h, v, mask)

    # Problem 0: one key left, softmax weight 1, h_attn = its projection (3, -3).
    h_attn = torch.tensor([3.0, -3.0])
    lam = torch.sigmoid(h[0, 0] + 2 * h_attn - 1)
    torch.testing.assert_close(gate[0, 0], lam)
    torch.testing.assert_close(fused[0, 0], (1 - lam) * h[0, 0] + lam * h_attn)
    # Problem 1: no image, h_attn = 0, λ = sigmoid(W_l h + b), fused = (1 - λ) h.
    lam = torch.sigmoid(h[1, 0] - 1)
    torch.testing.assert_close(gate[1, 0], lam)
    torch.testing.assert_close(fused[1, 0], (1 - lam) * h[1, 0])
    assert math.isclose(gate[1, 0, 0].item(), 1 / (1 + math.exp(-1.0)), rel_tol=1e-6)


def test_fusion_attention_scales_and_masks_like_the_formula():
    """Random weights, several keys: softmax(q·kᵀ/√d) over the unmasked keys only, against an explicit computation."""
    torch.manual_seed(1)
    fusion = MMCoTGatedFusion(hidden_size=4, vision_hidden_size=3)
    h, v = torch.randn(1, 2, 4), torch.randn(1, 3, 3)
    mask = torch.tensor([[True, True, False]])
    fused, gate = fusion(h, v, mask)
    w_q, w_k, w_v = fusion.attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = fusion.attention.in_proj_bias.chunk(3)
    tokens = fusion.vision_projection(v)[0, :2]
    scores = (h[0] @ w_q.T + b_q) @ (tokens @ w_k.T + b_k).T / 2.0  # √d = 2
    h_attn = fusion.attention.out_proj(scores.softmax(-1) @ (tokens @ w_v.T + b_v))
    lam = torch.sigmoid(fusion.gate(torch.cat([h[0], h_attn], dim=-1)))
    torch.testing.assert_close(gate[0], lam)
    torch.testing.assert_close(fused[0], (1 - lam) * h[0] + lam * h_attn)


# -- processor and parsing --------------------------------------------------------------------------------------------
def test_processor_pads_labels_with_minus_100_and_masks_missing_images(processor, problems):
    batch = with_and_without_image(problems)
    rationales = [format_target(p, "rationale") for p in batch]
    inputs = processor(batch, stage=["rationale", "answer", "direct", "answer"], rationales=[None, *rationales[1:]], return_labels=True)
    assert inputs["image_mask"].tolist() == [1, 1, 0, 0]
    assert inputs["pixel_values"][2:].abs().sum() == 0
    labels = inputs["labels"]
    lengths = [len(processor.tokenizer(format_target(p, s)).input_ids) for p, s in zip(batch, ["rationale", "answer", "direct", "answer"])]
    for row, length in enumerate(lengths):
        assert labels[row, length - 1] == processor.tokenizer.eos_token_id
        assert (labels[row, length:] == -100).all() and (labels[row, :length] >= 0).all()
    prompt = processor.tokenizer.decode(inputs["input_ids"][1], skip_special_tokens=True)
    assert prompt.endswith(f"Solution: {rationales[1]} Answer:")


def test_processor_errors_name_the_problem(processor, problems):
    with pytest.raises(ValueError, match="Problem 0 has no options"):
        processor([{"question": "Why?", "choices": []}])
    with pytest.raises(ValueError, match="Problem 1 has answer 3 but 2 options"):
        processor([problems[0], {"question": "Why?", "choices": ["a", "b"], "answer": 3}], return_labels=True)
    with pytest.raises(ValueError, match="Stage 'answer' needs one rationale per problem"):
        processor(problems[:2], stage="answer")
    with pytest.raises(ValueError, match="Problem 0 has 'vision_features' but this processor reads 'image'"):
        processor([{**problems[0], "image": None, "vision_features": np.zeros((3, 4))}])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is blue.", 1),
        ("The answer is (B).", 1),  # the original's form, the letter alone
        ("I think red. So the answer is  green .", 2),
        ("The answer is (D).", None),  # a letter beyond the three options
        ("The answer is purple.", None),  # no option's text
        ("The answer is blue or green.", None),
        ("The answer is B.", None),
        ("", None),
        ("blue", None),  # an option's text alone is not read as a choice
    ],
)
def test_parse_answer_never_guesses(text, expected):
    assert parse_answer(text, ["red", "blue", "green"]) == expected
    assert parse_answer("The answer is red.", ["red", "red", "blue"]) is None  # two options with that text


def test_unparsed_answers_stay_unparsed(processor):
    problem = {"question": "Which?", "choices": ["red", "blue"]}
    predictions = processor.decode_answers(["I think red", "The answer is blue."], [problem, problem])
    assert [p.choice_index for p in predictions] == [None, 1]
    assert (predictions[0].letter, predictions[0].choice) == (None, None)
    assert (predictions[1].letter, predictions[1].choice) == ("B", "blue")


# -- model ------------------------------------------------------------------------------------------------------------
def test_loss_ignores_padding(model, processor, problems):
    batch = with_and_without_image(problems)
    inputs = processor(batch, stage="rationale", return_labels=True)
    loss = model(**inputs).loss
    logits = model(**inputs).logits
    labels = inputs["labels"]
    expected = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(loss, expected)


def test_generate_runs_the_fusion_once_with_the_vision_inputs(model, processor, problems):
    """Beam search with the KV cache: the fused encoder runs once per call, and it receives the images (the problem
    without one masked); other images change the scores."""
    batch = with_and_without_image(problems, 2)
    inputs = processor(batch, stage="rationale")
    calls = []
    handle = model.fusion.register_forward_hook(lambda module, args, output: calls.append(args))
    try:
        first = model.generate(**inputs, num_beams=2, max_new_tokens=5, output_scores=True, return_dict_in_generate=True)
    finally:
        handle.remove()
    assert len(calls) == 1
    text_states, vision_states, vision_mask = calls[0]
    assert vision_states is not None and vision_states.shape[0] == 2
    assert vision_mask[0].all() and not vision_mask[1].any()
    expected = model.vision_tower(pixel_values=inputs["pixel_values"][:1]).last_hidden_state
    torch.testing.assert_close(vision_states[:1], expected)

    other = dict(inputs, pixel_values=torch.flip(inputs["pixel_values"], dims=[-1]))
    second = model.generate(**other, num_beams=2, max_new_tokens=5, output_scores=True, return_dict_in_generate=True)
    assert not torch.allclose(first.scores[0][:2], second.scores[0][:2])  # problem 0 saw another picture
    torch.testing.assert_close(first.scores[0][2:], second.scores[0][2:])  # problem 1 has none


def test_cached_generation_equals_uncached(model, processor, problems):
    inputs = processor(with_and_without_image(problems), stage="rationale")
    cached = model.generate(**inputs, max_new_tokens=10, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    beams = [model.generate(**inputs, max_new_tokens=6, num_beams=3, use_cache=flag) for flag in (True, False)]
    assert torch.equal(*beams)


def test_solve_runs_both_stages(model, processor, problems):
    batch = with_and_without_image(problems)
    predictions = model.solve(processor, batch)
    assert len(predictions) == 4 and all(isinstance(p.rationale, str) for p in predictions)
    rationales = processor.batch_decode(model.generate(**processor(batch, stage="rationale"), max_new_tokens=12))
    assert [p.rationale for p in predictions] == rationales  # stage 2 read the generated rationale
    single = model.solve(processor, batch[0])
    assert single.answer_text == predictions[0].answer_text
    direct = model.solve(processor, batch, direct=True)
    assert all(p.rationale is None for p in direct)


def test_lora_touches_only_decoder_layers_from_one(tokenizer):
    model = MMCoTForConditionalGeneration(tiny_config(tokenizer))
    adapted = apply_lora(model, {}, first_layer={"language_model.decoder": 1}, modules_to_save=["fusion", "vision_tower"])
    trainable = {name for name, parameter in adapted.named_parameters() if parameter.requires_grad}
    lora = {name for name in trainable if "lora_" in name}
    assert lora and all(".decoder.block.1." in name for name in lora)
    assert any(".decoder.block.1.layer.0.SelfAttention.q.lora_A" in name for name in lora)
    others = trainable - lora
    assert others and all(".fusion." in name or ".vision_tower." in name for name in others)
    fusion = {name.split(".fusion.modules_to_save.default.")[1] for name in others if ".fusion." in name}
    assert fusion == {name for name, _ in MMCoTGatedFusion(32, 32).named_parameters()}  # all of the fusion trains
    merged = merge_lora(adapted)
    assert type(merged) is MMCoTForConditionalGeneration


def test_pretrained_t5_folder_gives_weights_and_tokenizer(tmp_path, tokenizer):
    """`--model_name_or_path` on a local folder: the same `from_pretrained` calls as for google/flan-t5-base."""
    t5 = T5ForConditionalGeneration(T5Config(**T5_SIZES, vocab_size=len(tokenizer), decoder_start_token_id=0))
    t5.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    model = MMCoTForConditionalGeneration.from_pretrained_backbones(
        str(tmp_path / "t5"), vision_config=tiny_vision_config(image_size=IMAGE_SIZE, patch_size=16, hidden_size=32, num_layers=1)
    )
    for name, value in t5.state_dict().items():
        torch.testing.assert_close(model.language_model.state_dict()[name], value)
    loaded = AutoTokenizer.from_pretrained(tmp_path / "t5")
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
    text = "Question: Which is Red? Options: (A) iron (B) glass"
    assert loaded(text).input_ids == tokenizer(text).input_ids  # cased, same pieces


def test_frozen_pretrained_vision_tower_from_a_folder(tmp_path, tokenizer):
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel(tiny_vision_config(image_size=IMAGE_SIZE, patch_size=16, hidden_size=32, num_layers=1))
    tower.save_pretrained(tmp_path / "vision")
    model = MMCoTForConditionalGeneration.from_pretrained_backbones(
        vision_model_name_or_path=str(tmp_path / "vision"), text_config=tiny_config(tokenizer).text_config, freeze_vision_tower=True
    )
    torch.testing.assert_close(model.vision_tower.state_dict(), tower.state_dict())
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    model.train()
    assert not model.vision_tower.training


def test_precomputed_features_of_the_wrong_width_are_refused(tokenizer):
    model = MMCoTForConditionalGeneration(tiny_config(tokenizer, vision_config=None, vision_feature_dim=6))
    inputs = dict(input_ids=torch.tensor([[5, 6, 1]]), vision_features=torch.zeros(1, 4, 7), image_mask=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"vision_features must have shape \(batch, tokens, 6\), got \(1, 4, 7\)"):
        model.encode(**inputs)
    with pytest.raises(ValueError, match="no vision tower"):
        model.encode(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 8, 8))


def test_fresh_process_loads_through_both_auto_classes_and_solves(model, processor, problems, tmp_path):
    batch = with_and_without_image(problems, 2)
    expected = [p.__dict__ for p in model.solve(processor, batch)]
    folder = save_for_hub(model, processor, tmp_path / "checkpoint")
    for pid, problem in zip(("a", "b"), batch):
        if problem["image"] is not None:
            problem["image"].save(tmp_path / f"{pid}.png")
    (tmp_path / "problems.json").write_text(json.dumps([{k: v for k, v in p.items() if k != "image"} for p in batch]))
    script = """
import json, sys
from pathlib import Path
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoProcessor
folder, tmp = sys.argv[1], Path(sys.argv[2])
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
problems = json.loads((tmp / "problems.json").read_text())
for pid, problem in zip(("a", "b"), problems):
    problem["image"] = Image.open(tmp / f"{pid}.png") if (tmp / f"{pid}.png").exists() else None
results = {}
for auto_class in (AutoModel, AutoModelForSeq2SeqLM):
    model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "MMCoTForConditionalGeneration", type(model)
    results[auto_class.__name__] = [p.__dict__ for p in model.solve(processor, problems)]
(tmp / "answers.json").write_text(json.dumps(results))
"""
    run_outside_project(script, [folder, tmp_path], tmp_path)
    results = json.loads((tmp_path / "answers.json").read_text())
    assert results["AutoModel"] == expected
    assert results["AutoModelForSeq2SeqLM"] == expected
