"""Sign2Text config, model and processor: losses, cached generation, use of the visual input, save/load, Hub."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModel, GenerationMixin

from configuration import SequenceEncoderConfig, Sign2TextConfig
from data.synthetic_signs import make_signs_dataset
from fresh_process import run_outside_project
from hub import save_for_hub
from modeling import Sign2TextModel
from modeling.modeling_sign2text import ctc_loss, make_gloss_labels
from processing import Sign2TextProcessor
from train.backbones import tiny_text_config
from train.lora import apply_lora, load_lora, merge_lora

MAX_FRAMES = 96
MAX_TARGET_LENGTH = 12
NUM_CLIPS = 6


def tiny_config(**overrides) -> Sign2TextConfig:
    defaults = dict(
        sequence_config=SequenceEncoderConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, dropout=0.0,
            max_frames=MAX_FRAMES,
        ),
        text_config=tiny_text_config(hidden_size=32, num_layers=1),
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        decoder_dropout=0.0,
        max_target_length=MAX_TARGET_LENGTH,
        projection_dim=32,
    )
    defaults.update(overrides)
    return Sign2TextConfig(**defaults)


@pytest.fixture(scope="module")
def processor(tokenizer) -> Sign2TextProcessor:
    return Sign2TextProcessor(tokenizer, max_target_length=MAX_TARGET_LENGTH, max_frames=MAX_FRAMES)


@pytest.fixture(scope="module")
def clips() -> dict:
    """`NUM_CLIPS` clips of distinct sentences, plus a second signing of the first sentence (a SupCon positive)."""
    dataset = make_signs_dataset(60, seed=0, feature_dim=None, num_sentences=12).with_format("numpy")
    sentence_ids = [int(sentence_id) for sentence_id in dataset["sentence_id"]]
    distinct = list(dict.fromkeys(sentence_ids))[:NUM_CLIPS]
    rows = [sentence_ids.index(sentence_id) for sentence_id in distinct]
    rows.append(sentence_ids.index(distinct[0], rows[0] + 1))
    return {
        "keypoints": [dataset[row]["keypoints"] for row in rows],
        "sentences": [str(dataset[row]["sentence"]) for row in rows],
        "sentence_ids": torch.tensor([sentence_ids[row] for row in rows]),
    }


@pytest.fixture(scope="module")
def batch(processor, clips) -> dict:
    inputs = processor(keypoints=clips["keypoints"], text=clips["sentences"])
    return {**inputs, "sentence_ids": clips["sentence_ids"]}


def visual_inputs(batch: dict) -> dict:
    return {"keypoints": batch["keypoints"], "frame_mask": batch["frame_mask"]}


@pytest.fixture(scope="module")
def trained(batch) -> Sign2TextModel:
    """A tiny model overfitted on the distinct clips with the generation loss alone."""
    torch.manual_seed(0)
    model = Sign2TextModel(tiny_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    inputs = {name: batch[name][:NUM_CLIPS] for name in ("keypoints", "frame_mask", "labels")}
    for _ in range(150):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# ----------------------------------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip(tmp_path):
    config = Sign2TextConfig()
    assert isinstance(config.sequence_config, SequenceEncoderConfig)
    assert (config.sequence_config.hidden_size, config.sequence_config.num_hidden_layers) == (512, 4)
    assert config.sequence_config.dropout == 0.2 and config.text_config.model_type == "distilbert"
    assert (config.pad_token_id, config.decoder_start_token_id, config.eos_token_id) == (0, 101, 102)
    assert (config.supcon_weight, config.clip_weight, config.generation_weight) == (1.0, 1.0, 2.0)
    assert config.contrastive_temperature == 0.05 and config.is_encoder_decoder
    # generation reads the decoder's fields from the config itself, never from the text encoder's config
    assert config.get_text_config(decoder=True) is config and config.num_hidden_layers == config.decoder_layers

    config = tiny_config(clip_weight=0.5, freeze_text_encoder=False)
    config.save_pretrained(tmp_path)
    reloaded = Sign2TextConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert isinstance(reloaded.sequence_config, SequenceEncoderConfig) and reloaded.sequence_config.hidden_size == 64
    assert reloaded.text_config.model_type == "bert" and reloaded.clip_weight == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(decoder_attention_heads=5), "divisible by decoder_attention_heads"),
        (dict(clip_weight=-1.0), "non-negative"),
        (dict(generation_weight=0.0, clip_weight=0.0, supcon_weight=0.0), "not all zero"),
        (dict(contrastive_temperature=0.0), "contrastive_temperature must be positive"),
        (dict(eos_token_id=40000), r"eos_token_id \(40000\) must lie in"),
        (dict(max_target_length=0), "max_target_length must be positive"),
        (dict(decoder_dropout=1.0), "decoder_dropout"),
        (dict(ctc_weight=1.0), "needs a gloss_vocabulary"),
        (dict(label_smoothing=1.0), "label_smoothing"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


# ----------------------------------------------------------------------------------------------------- model


def test_initialisation_ties_the_lm_head_and_freezes_the_text_encoder():
    model = Sign2TextModel(tiny_config())
    assert isinstance(model, GenerationMixin)
    assert model.lm_head.weight is model.decoder.embed_tokens.weight
    assert torch.all(model.decoder.embed_tokens.weight[0] == 0)  # [PAD]
    linear = model.decoder.layers[0].cross_attn.k_proj.weight
    assert linear.std().item() == pytest.approx(0.02, rel=0.1)
    assert not any(p.requires_grad for p in model.text_model.parameters())
    assert all(p.requires_grad for p in model.text_projection.parameters())
    assert model.train().training and model.decoder.training and not model.text_model.training


def test_forward_returns_every_loss_as_their_weighted_sum(batch):
    model = Sign2TextModel(tiny_config())
    out = model(**batch)
    for name in ("generation_loss", "clip_loss", "supcon_loss", "loss"):
        assert out[name].ndim == 0 and torch.isfinite(out[name]), name
    assert out.loss.item() == pytest.approx(
        (2.0 * out.generation_loss + out.clip_loss + out.supcon_loss).item(), rel=1e-6
    )
    batch_size, target_length = batch["labels"].shape
    assert out.logits.shape == (batch_size, target_length, model.config.vocab_size)
    assert out.visual_embeds.shape == out.text_embeds.shape == (batch_size, 32)
    assert torch.allclose(out.visual_embeds.norm(dim=-1), torch.ones(batch_size), atol=1e-5)
    assert out.encoder_last_hidden_state.shape == (*batch["frame_mask"].shape, 64)
    # a fresh decoder is near uniform over the vocabulary
    assert out.generation_loss.item() == pytest.approx(math.log(model.config.vocab_size), rel=0.05)


def test_embedding_memory_adds_past_clips_to_supcon_only_in_training(batch):
    model = Sign2TextModel(tiny_config(memory_size=32)).train()
    first = model(**batch)
    assert model.memory.num_filled == len(batch["sentence_ids"])
    second = model(**batch)  # the same clips again: now also in memory as extra positives and negatives
    assert model.memory.num_filled == 2 * len(batch["sentence_ids"])
    assert not torch.isclose(second.supcon_loss, first.supcon_loss)
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert model.memory.num_filled == 2 * len(batch["sentence_ids"])
    assert "memory.embeds" not in model.state_dict()  # training state, not a weight


@pytest.mark.parametrize(
    ("weight", "term", "untouched"),
    [("generation_weight", "generation_loss", "lm_head"), ("clip_weight", "clip_loss", "text_projection"),
     ("supcon_weight", "supcon_loss", None)],
)
def test_zero_weight_removes_its_term(batch, weight, term, untouched):
    model = Sign2TextModel(tiny_config(**{weight: 0.0}))
    out = model(**batch)
    weights = {"generation_loss": 2.0, "clip_loss": 1.0, "supcon_loss": 1.0, term: 0.0}
    expected = sum(weights[name] * out[name] for name in weights)
    assert out[term] is not None and out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    if untouched is not None:
        assert all(p.grad is None for p in getattr(model, untouched).parameters())


def test_ctc_loss_of_a_hand_built_case():
    """Two frames, one target gloss a: the valid alignments are (a, a), (blank, a) and (a, blank), so the loss is
    -log of the sum of their probabilities. A masked frame between the two is taken out, not counted as blank."""
    logits = torch.tensor([[[0.3, 1.2, -0.5], [1.0, 0.1, 0.4]]], dtype=torch.float64)
    p = logits.softmax(dim=-1)[0]
    blank, a = 0, 1
    by_hand = -torch.log(p[0, a] * p[1, a] + p[0, blank] * p[1, a] + p[0, a] * p[1, blank])
    labels = torch.tensor([[a, -100]])
    torch.testing.assert_close(ctc_loss(logits, None, labels), by_hand.float())
    gap = torch.cat([logits[:, :1], torch.full((1, 1, 3), 9.0, dtype=torch.float64), logits[:, 1:]], dim=1)
    torch.testing.assert_close(ctc_loss(gap, torch.tensor([[1, 0, 1]]), labels), by_hand.float())
    # a target that cannot fit (two glosses, one frame) gives 0, not inf
    assert ctc_loss(logits[:, :1], None, torch.tensor([[1, 2]])).item() == 0.0


def test_model_ctc_loss_reads_the_gloss_head_and_joins_the_sum(batch, clips):
    glosses = sorted({word for sentence in clips["sentences"] for word in sentence.split()})
    model = Sign2TextModel(tiny_config(ctc_weight=0.5, gloss_vocabulary=glosses))
    gloss_labels = make_gloss_labels(clips["sentences"], glosses)
    assert gloss_labels[0, : len(clips["sentences"][0].split())].tolist() == [
        glosses.index(word) + 1 for word in clips["sentences"][0].split()
    ]
    out = model(**batch, gloss_labels=gloss_labels)
    expected = ctc_loss(model.ctc_head(out.encoder_last_hidden_state), batch["frame_mask"], gloss_labels)
    torch.testing.assert_close(out.ctc_loss, expected)
    assert out.loss.item() == pytest.approx(
        (2.0 * out.generation_loss + out.clip_loss + out.supcon_loss + 0.5 * out.ctc_loss).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="need the CTC head"):
        Sign2TextModel(tiny_config())(**visual_inputs(batch), gloss_labels=gloss_labels)


def test_label_smoothing_is_the_smoothed_cross_entropy(batch):
    torch.manual_seed(0)
    model = Sign2TextModel(tiny_config(label_smoothing=0.1))
    out = model(**visual_inputs(batch), labels=batch["labels"])
    expected = torch.nn.functional.cross_entropy(
        out.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, label_smoothing=0.1
    )
    torch.testing.assert_close(out.generation_loss, expected)


def test_losses_without_their_inputs_are_skipped(batch):
    model = Sign2TextModel(tiny_config())
    out = model(**visual_inputs(batch), labels=batch["labels"])
    assert out.clip_loss is None and out.supcon_loss is None and out.text_embeds is None
    assert out.loss.item() == pytest.approx(2.0 * out.generation_loss.item(), rel=1e-6)
    out = model(**visual_inputs(batch), text_input_ids=batch["text_input_ids"], sentence_ids=batch["sentence_ids"])
    assert out.logits is None and out.generation_loss is None
    assert out.loss.item() == pytest.approx((out.clip_loss + out.supcon_loss).item(), rel=1e-6)
    assert model(**visual_inputs(batch)).loss is None
    with pytest.raises(ValueError, match="one target sentence per clip"):
        model(**visual_inputs(batch), text_input_ids=batch["text_input_ids"][:2])


def test_generation_loss_reaches_the_encoder_but_not_the_contrastive_heads(batch):
    model = Sign2TextModel(tiny_config())
    model(**visual_inputs(batch), labels=batch["labels"]).loss.backward()
    encoder = model.encoder.sequence_encoder
    assert encoder.keypoint_projection.weight.grad.abs().sum() > 0
    assert encoder.layers.layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.visual_projection.parameters())


def test_padded_frames_are_invisible(batch):
    model = Sign2TextModel(tiny_config()).eval()
    inputs = {**visual_inputs(batch), "labels": batch["labels"]}
    assert (inputs["frame_mask"] == 0).any()
    noisy = {**inputs, "keypoints": torch.where(inputs["frame_mask"][..., None, None].bool(), inputs["keypoints"], 5.0)}
    with torch.no_grad():
        clean_out, noisy_out = model(**inputs), model(**noisy)
    torch.testing.assert_close(noisy_out.logits, clean_out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(noisy_out.visual_embeds, clean_out.visual_embeds, atol=1e-5, rtol=0)


def test_incremental_decoding_matches_a_full_forward(batch):
    model = Sign2TextModel(tiny_config()).eval()
    inputs = visual_inputs(batch)
    decoder_input_ids = batch["text_input_ids"][:, :6]
    with torch.no_grad():
        full = model(**inputs, decoder_input_ids=decoder_input_ids).logits
        encoder_outputs = model.get_encoder()(**inputs)
        cache, steps = None, []
        for position in range(decoder_input_ids.shape[1]):
            out = model(
                encoder_outputs=encoder_outputs, frame_mask=inputs["frame_mask"], cache=cache,
                decoder_input_ids=decoder_input_ids[:, position : position + 1], use_cache=True,
            )
            cache = out.cache
            steps.append(out.logits)
    assert cache.get_seq_length() == decoder_input_ids.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
def test_cached_generation_equals_uncached(trained, batch, num_beams):
    inputs = visual_inputs(batch)
    cached = trained.generate(**inputs, num_beams=num_beams)
    uncached = trained.generate(**inputs, num_beams=num_beams, use_cache=False)
    assert torch.equal(cached, uncached)
    assert (cached[:, 0] == trained.config.decoder_start_token_id).all()


@pytest.mark.parametrize(
    "options", [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 20}], ids=["greedy", "beam", "sample"]
)
def test_encoder_runs_once_per_generate(batch, options):
    model = Sign2TextModel(tiny_config()).eval()
    calls = []
    handle = model.encoder.register_forward_hook(lambda *_: calls.append(1))
    model.generate(**visual_inputs(batch), max_length=6, **options)
    handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("use_keypoints", [True, False], ids=["keypoints-and-features", "features-only"])
def test_generation_with_frame_features(use_keypoints):
    sequence_config = SequenceEncoderConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, dropout=0.0,
        use_keypoints=use_keypoints, use_visual_features=True, feature_dim=8,
    )
    model = Sign2TextModel(tiny_config(sequence_config=sequence_config, decoder_layers=1, decoder_attention_heads=2))
    inputs = {"frame_features": torch.randn(2, 7, 8), "frame_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}
    if use_keypoints:
        with pytest.raises(ValueError, match="needs `keypoints` in generate"):
            model.generate(**inputs, max_length=5)
        inputs["keypoints"] = torch.randn(2, 7, 21, 2)
    cached = model.eval().generate(**inputs, num_beams=2, max_length=6)
    assert torch.equal(cached, model.generate(**inputs, num_beams=2, max_length=6, use_cache=False))


def test_clip_without_any_real_frame_is_refused(batch):
    model = Sign2TextModel(tiny_config())
    frame_mask = batch["frame_mask"].clone()
    frame_mask[1] = 0
    with pytest.raises(ValueError, match=r"Clips \[1\] have no unmasked frame"):
        model(keypoints=batch["keypoints"], frame_mask=frame_mask, labels=batch["labels"])


def test_sampling_is_reproducible_under_a_seed(trained, batch):
    inputs = visual_inputs(batch)
    torch.manual_seed(1)
    first = trained.generate(**inputs, do_sample=True, top_k=20)
    torch.manual_seed(1)
    second = trained.generate(**inputs, do_sample=True, top_k=20)
    assert torch.equal(first, second) and first.shape[1] <= MAX_TARGET_LENGTH + 1
    greedy = trained.generate(**inputs)
    assert torch.equal(trained.generate(**inputs, do_sample=True, top_k=1), greedy)


def test_generation_longer_than_the_position_table_is_refused(batch):
    model = Sign2TextModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="max_target_length"):
        model.generate(**visual_inputs(batch), max_length=MAX_TARGET_LENGTH + 2, min_length=MAX_TARGET_LENGTH + 2)


def test_overfitted_decoder_reads_the_clip(trained, batch, clips, processor):
    inputs = visual_inputs(batch)
    generated = processor.batch_decode(trained.generate(**inputs))
    assert generated[:NUM_CLIPS] == clips["sentences"][:NUM_CLIPS]
    blank = trained.generate(keypoints=torch.zeros_like(inputs["keypoints"]), frame_mask=inputs["frame_mask"])
    assert processor.batch_decode(blank)[:NUM_CLIPS] != generated[:NUM_CLIPS]


def test_save_and_load_give_identical_logits(trained, batch, tmp_path):
    trained.save_pretrained(tmp_path)
    reloaded = Sign2TextModel.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.weight is reloaded.decoder.embed_tokens.weight
    assert not any(p.requires_grad for p in reloaded.text_model.parameters())
    with torch.no_grad():
        expected, actual = trained(**batch), reloaded(**batch)
    assert torch.equal(actual.logits, expected.logits) and torch.equal(actual.loss, expected.loss)


LOAD_SCRIPT = """
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor

checkpoint, inputs_path, output_path = sys.argv[1:]
config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
inputs = processor(keypoints=torch.load(inputs_path, weights_only=False))
sequences = model.generate(keypoints=inputs["keypoints"], frame_mask=inputs["frame_mask"], num_beams=2)
torch.save(
    {
        "classes": [type(obj).__module__ + "." + type(obj).__name__ for obj in (config, model, processor)],
        "sequences": sequences,
        "sentences": processor.batch_decode(sequences),
        "text_encoder_frozen": not any(p.requires_grad for p in model.text_model.parameters()),
    },
    output_path,
)
"""


def test_hub_checkpoint_generates_the_same_tokens_in_a_fresh_process(trained, processor, clips, batch, tmp_path):
    checkpoint = save_for_hub(trained, processor, tmp_path / "sign2text")
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSeq2SeqLM"] == auto_map["AutoModel"] == "modeling_sign2text.Sign2TextModel"
    inputs_path, output_path = tmp_path / "keypoints.pt", tmp_path / "outputs.pt"
    torch.save(clips["keypoints"], inputs_path)
    run_outside_project(LOAD_SCRIPT, [checkpoint, inputs_path, output_path], tmp_path)
    loaded = torch.load(output_path)
    assert [name.rpartition(".")[2] for name in loaded["classes"]] == [
        "Sign2TextConfig", "Sign2TextModel", "Sign2TextProcessor"
    ]
    assert all(name.startswith("transformers_modules.") for name in loaded["classes"])
    expected = trained.generate(**visual_inputs(batch), num_beams=2)
    assert torch.equal(loaded["sequences"], expected) and loaded["text_encoder_frozen"]
    assert loaded["sentences"][:NUM_CLIPS] == clips["sentences"][:NUM_CLIPS]


def test_decoder_lora_trains_saves_loads_and_merges_through_automodel(trained, batch, processor, tmp_path):
    """LoRA on decoder layers 1 and up: only those adapters move, the adapter reloads onto the base, and the merged
    model comes back through AutoModel with the same logits."""
    base_dir = tmp_path / "base"
    trained.save_pretrained(base_dir)
    peft_model = apply_lora(Sign2TextModel.from_pretrained(base_dir), {}, first_layer={"decoder": 1}, r=4, alpha=8)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".decoder.layers.1." in name and "lora_" in name for name in trainable)
    frozen_before = {name: p.detach().clone() for name, p in peft_model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    inputs = {name: batch[name] for name in ("keypoints", "frame_mask", "labels")}
    losses = []
    for _ in range(10):
        loss = peft_model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen_before[name]) for name, p in peft_model.named_parameters() if not p.requires_grad)

    peft_model.eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = load_lora(Sign2TextModel.from_pretrained(base_dir), tmp_path / "adapter").eval()
    with torch.no_grad():
        expected = peft_model(**inputs).logits
        torch.testing.assert_close(loaded(**inputs).logits, expected)
        checkpoint = save_for_hub(merge_lora(peft_model), processor, tmp_path / "merged")
        merged = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
        assert not any("lora" in name for name in merged.state_dict())
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------- processor


def test_processor_builds_targets_for_the_decoder_and_the_text_encoder(processor, tokenizer):
    keypoints = [np.random.default_rng(0).random((9, 21, 2)), np.random.default_rng(1).random((5, 21, 2))]
    out = processor(keypoints=keypoints, text=["where is the doctor", "i eat"])
    assert out["keypoints"].shape == (2, 9, 21, 2) and out["frame_mask"].sum(1).tolist() == [9, 5]
    words = tokenizer("where is the doctor", add_special_tokens=False)["input_ids"]
    assert out["labels"][0].tolist() == words + [102]
    assert out["labels"][1].tolist() == [1045, 4521, 102, -100, -100]
    assert out["text_input_ids"][0].tolist() == [101, *words, 102]
    assert out["text_attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0]
    assert processor.batch_decode(torch.tensor([[101, *words, 102, 0]])) == ["where is the doctor"]
    with pytest.warns(UserWarning, match="Target sentence 0 has 13 tokens"):
        long = processor(text=["where is the doctor " * 3])
    assert long["labels"].shape == (1, MAX_TARGET_LENGTH) and long["labels"][0, -1] == 102


def test_processor_masks_frames_without_any_keypoint(tokenizer):
    processor = Sign2TextProcessor(tokenizer, missing_keypoints="mask")
    clip = np.random.default_rng(0).random((4, 21, 2))
    clip[2] = np.nan
    assert processor(keypoints=[clip])["frame_mask"].tolist() == [[1, 1, 0, 1]]
    with pytest.raises(ValueError, match="Every keypoint of every frame of sequence 0 is missing"):
        processor(keypoints=[np.full((3, 21, 2), np.nan)])


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        (dict(text=["where is the doctor", "  "]), ValueError, "target sentence 1 is empty"),
        (dict(text=["ok", "I \u2764 you \U0001f600"]), ValueError, r"Target sentence 1 .*\['❤', '😀'\]"),
        (dict(text=["ab\u2603cd"]), ValueError, r"cannot represent: \['☃'\]"),
        (dict(text=["\u200b"]), ValueError, "has no token the vocabulary can represent"),
        (dict(text=[3]), TypeError, "target sentence 0 is a int"),
        (dict(keypoints=[np.zeros((4, 21, 2))] * 2, text=["one"]), ValueError, "different batch sizes"),
        (dict(keypoints=[np.full((4, 21, 2), np.nan)]), ValueError, "contain NaN"),
        (dict(keypoints=[np.zeros((4, 20, 2))]), ValueError, r"expected \(frames, 21, 2\)"),
        (dict(), ValueError, "Pass keypoints, frame_features or text"),
    ],
    ids=["empty", "emoji", "unknown-inside-word", "nothing-tokenizable", "not-a-string", "batch-mismatch",
         "nan-keypoints", "wrong-shape", "no-input"],
)
def test_processor_rejects_bad_input(processor, inputs, error, message):
    with pytest.raises(error, match=message):
        processor(**inputs)
