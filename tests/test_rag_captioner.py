"""RAG captioner config, model and processor: fusion inputs, losses, generation with and without the datastore,
training-time retrieval hygiene reaching the decoder, save/load with the index, LoRA, and a fresh-process load."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, GenerationMixin, GPT2Config, GPT2LMHeadModel

from conftest import tiny_vlp_config
from configuration import RagCaptionerConfig, VLPConfig
from configuration.configuration_rag_captioner import RetrieverVLPConfig
from data.synthetic_shapes import make_shapes_dataset
from fresh_process import run_outside_project
from hub import save_for_hub
from modeling import RagCaptionerModel, VLPModel
from modeling.modeling_rag_captioner import retriever_lambda_schedule
from modeling.modeling_retriever import datastore_ids_by_item, sample_retrieval
from processing import RagCaptionerProcessor, VLPProcessor
from train.backbones import load_image_processor, tiny_text_config
from train.lora import apply_lora

IMAGE_SIZE = 32
K = 3
MAX_CAPTION_TOKENS = 30
NUM_IMAGES = 12


def tiny_config(**overrides) -> RagCaptionerConfig:
    defaults = dict(
        retriever_config=tiny_vlp_config(
            sequence_config=None, text_config=tiny_text_config(vocab_size=30522, hidden_size=32, num_layers=1)
        ),
        decoder_config=GPT2Config(
            vocab_size=30522, n_positions=160, n_embd=64, n_layer=3, n_head=2, bos_token_id=101, eos_token_id=102,
            pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        ),
        num_retrieved=K,
        retrieval_projection_dim=32,
        max_caption_tokens=MAX_CAPTION_TOKENS,
    )
    defaults.update(overrides)
    return RagCaptionerConfig(**defaults)


@pytest.fixture(scope="module")
def processor(tokenizer) -> RagCaptionerProcessor:
    return RagCaptionerProcessor(load_image_processor(None, IMAGE_SIZE), tokenizer, max_caption_length=MAX_CAPTION_TOKENS)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_dataset(NUM_IMAGES, seed=0, image_size=IMAGE_SIZE, captions_per_image=3)


@pytest.fixture(scope="module")
def datastore(shapes) -> dict:
    captions = [caption for image_captions in shapes["captions"] for caption in image_captions]
    return {"captions": captions, "owners": datastore_ids_by_item([len(c) for c in shapes["captions"]])}


@pytest.fixture(scope="module")
def pixel_values(processor, shapes) -> torch.Tensor:
    return processor(images=list(shapes["image"]))["pixel_values"]


def build_model(tokenizer, datastore, **overrides) -> RagCaptionerModel:
    model = RagCaptionerModel(tiny_config(**overrides))
    model.set_tokenizers(tokenizer, tokenizer)
    model.retriever.build(datastore["captions"], batch_size=16, show_progress=False)
    return model


def training_batch(model, processor, shapes, datastore, pixel_values, ids) -> dict:
    """The first caption of every image with the given retrieved datastore ids, in the model's fusion."""
    captions = [image_captions[0] for image_captions in shapes["captions"]]
    if model.config.fusion == "prompt":
        return {"pixel_values": pixel_values, **processor(text=captions, retrieved_captions=model.retriever.lookup(ids))}
    return {"pixel_values": pixel_values, **processor(text=captions), **model.retrieval_embeddings(retrieved_ids=ids)}


def own_excluded_neighbours(model, datastore, pixel_values) -> np.ndarray:
    return model.retrieve(pixel_values, exclude=datastore["owners"]).ids


@pytest.fixture(scope="module", params=["concat", "prompt"])
def trained(request, tokenizer, processor, shapes, datastore, pixel_values) -> RagCaptionerModel:
    """A tiny captioner of each fusion overfitted on the images with their retrieved neighbours."""
    torch.manual_seed(0)
    model = build_model(tokenizer, datastore, fusion=request.param)
    batch = training_batch(model, processor, shapes, datastore, pixel_values, own_excluded_neighbours(model, datastore, pixel_values))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(100):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# ----------------------------------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip(tmp_path):
    config = RagCaptionerConfig()
    assert isinstance(config.retriever_config, RetrieverVLPConfig) and config.retriever_config.projection_dim == 128
    assert config.retriever_config.vision_config.image_size == 64
    assert config.decoder_config.model_type == "gpt2" and config.decoder_config.add_cross_attention
    assert (config.decoder_config.bos_token_id, config.decoder_config.eos_token_id) == (101, 102)
    assert (config.fusion, config.num_retrieved, config.index_factory, config.search_dim) == ("concat", 4, "Flat", None)
    assert config.get_text_config(decoder=True) is config.decoder_config

    vlp_config = tiny_vlp_config(sequence_config=None)
    assert type(vlp_config) is VLPConfig
    config = tiny_config(retriever_config=vlp_config, fusion="prompt", search_dim=16, index_factory="HNSW32")
    assert type(config.retriever_config) is RetrieverVLPConfig  # a loaded VLP model's config is converted
    config.save_pretrained(tmp_path)
    reloaded = RagCaptionerConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.retriever_config.projection_dim == 32 and reloaded.decoder_config.n_embd == 64
    assert (reloaded.fusion, reloaded.search_dim, reloaded.index_factory) == ("prompt", 16, "HNSW32")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(fusion="cross"), "fusion must be one of"),
        (dict(index_metric="cosine"), "index_metric must be one of"),
        (dict(search_dim=12), "not one of the retriever's trained Matryoshka dims"),
        (dict(index_file_name="../index.faiss"), "plain file or folder name"),
        (dict(num_frozen_decoder_layers=4), "exceeds the decoder's 3 layers"),
        (dict(num_retrieved=0), "num_retrieved must be positive"),
        (dict(retriever_lambda=-1.0), "retriever_lambda must be non-negative"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_needs_an_image_tower():
    sequence_only = tiny_vlp_config(vision_config=None)
    with pytest.raises(ValueError, match="no image tower"):
        tiny_config(retriever_config=sequence_only)


# ----------------------------------------------------------------------------------------------------- model


def test_initialisation_freezes_the_retriever_and_the_first_decoder_layer():
    model = RagCaptionerModel(tiny_config())
    assert isinstance(model, GenerationMixin)
    assert not any(p.requires_grad for p in model.vlp.parameters())
    layers = model.decoder.transformer.h
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for layer in layers[1:] for p in layer.parameters())
    assert all(p.requires_grad for p in model.retrieval_projection.parameters()) and model.retrieval_scale.requires_grad
    assert model.retrieval_scale.item() == 1.0
    assert model.decoder.lm_head.weight is model.decoder.transformer.wte.weight
    assert model.train().training and model.decoder.training and not model.vlp.training
    prompt = RagCaptionerModel(tiny_config(fusion="prompt", num_frozen_decoder_layers=0))
    assert prompt.retrieval_projection is None and prompt.retrieval_scale is None
    assert all(p.requires_grad for p in prompt.decoder.parameters())


def test_image_embeddings_are_the_vlp_visual_features(pixel_values):
    model = RagCaptionerModel(tiny_config()).eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.vlp.get_visual_features(pixel_values), dim=-1)
    torch.testing.assert_close(model.get_image_embeddings(model.get_image_tokens(pixel_values)), expected)


def test_own_captions_are_never_retrieved_for_training_images(tokenizer, datastore, pixel_values):
    model = build_model(tokenizer, datastore)
    neighbours = own_excluded_neighbours(model, datastore, pixel_values)
    assert neighbours.shape == (NUM_IMAGES, K) and (neighbours >= 0).all()
    for row, owners in zip(neighbours.tolist(), datastore["owners"]):
        assert not set(row) & set(owners)
    unrestricted = model.retrieve(pixel_values, k=len(datastore["captions"])).ids
    assert any(set(row[:K]) & set(owners) for row, owners in zip(unrestricted.tolist(), datastore["owners"]))


@pytest.mark.parametrize("fusion", ["concat", "prompt"])
def test_forward_loss_is_the_caption_cross_entropy(tokenizer, processor, shapes, datastore, pixel_values, fusion):
    """The loss reads next-token scores from the caption positions only; it equals the cross-entropy of a full
    forward over every position."""
    model = build_model(tokenizer, datastore, fusion=fusion).eval()
    ids = own_excluded_neighbours(model, datastore, pixel_values)
    batch = training_batch(model, processor, shapes, datastore, pixel_values, ids)
    with torch.no_grad():
        out = model(**batch)
        full = model(**{name: value for name, value in batch.items() if name != "labels"}).logits
    labels = batch["labels"]
    expected = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert out.lm_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.lm_loss.item() == pytest.approx(np.log(30522), rel=0.05)  # a fresh decoder is near uniform
    if fusion == "concat":
        assert 0.0 < out.alignment_loss.item() <= 2.0
        assert out.loss.item() == pytest.approx((out.lm_loss + 0.1 * out.alignment_loss).item(), rel=1e-6)
        heavier = model(**batch, retriever_lambda=2.0)
        assert heavier.loss.item() == pytest.approx((out.lm_loss + 2.0 * out.alignment_loss).item(), rel=1e-6)
    else:
        assert out.alignment_loss is None and out.loss.item() == out.lm_loss.item()
        assert (labels[:, : (batch["attention_mask"].cumsum(1) == 1).float().argmax(1).max() + 1] == -100).all()


def test_the_loss_trains_the_projections_and_upper_decoder_only(tokenizer, processor, shapes, datastore, pixel_values):
    model = build_model(tokenizer, datastore)
    batch = training_batch(model, processor, shapes, datastore, pixel_values, own_excluded_neighbours(model, datastore, pixel_values))
    model(**batch).loss.backward()
    assert model.retrieval_projection.fc1.weight.grad.abs().sum() > 0 and model.retrieval_scale.grad is not None
    assert model.image_projection.weight.grad.abs().sum() > 0
    assert model.decoder.transformer.h[1].crossattention.c_attn.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vlp.parameters())
    assert all(p.grad is None for p in model.decoder.transformer.h[0].parameters())


def test_empty_retrieval_rows_are_masked_out(tokenizer, datastore, pixel_values):
    model = build_model(tokenizer, datastore).eval()
    tokens = model.get_image_tokens(pixel_values[:2])
    retrieval = model.retrieval_embeddings(retrieved_ids=[[0, 1, 2], []])
    assert retrieval["retrieved_mask"].tolist() == [[True] * 3, [False] * 3]
    states, mask, alignment = model.fuse(tokens, **retrieval)
    assert states.shape[1] == tokens.shape[1] + 3 and mask[1, tokens.shape[1] :].sum() == 0
    alone, _, _ = model.fuse(tokens[1:])
    only_second = model.fuse(tokens[1:], **model.retrieval_embeddings(retrieved_ids=[[]]))[2]
    torch.testing.assert_close(states[1, : tokens.shape[1]], alone[0])
    assert alignment > 0 and only_second == 0  # no sample with retrieval, nothing to align


@pytest.mark.parametrize("fusion", ["concat", "prompt"])
def test_retrieval_dropout_and_distractors_change_what_the_decoder_sees(
    tokenizer, processor, shapes, datastore, pixel_values, fusion
):
    model = build_model(tokenizer, datastore, fusion=fusion).eval()
    neighbours = own_excluded_neighbours(model, datastore, pixel_values)
    size = len(datastore["captions"])

    def decoder_view(dropout_prob, distractor_prob):
        ids = [
            sample_retrieval(neighbours[row], K, np.random.default_rng((0, 0, row)), size, datastore["owners"][row],
                             distractor_prob=distractor_prob, dropout_prob=dropout_prob)
            for row in range(NUM_IMAGES)
        ]
        batch = training_batch(model, processor, shapes, datastore, pixel_values, ids)
        with torch.no_grad():
            return ids, batch, model(**batch).logits

    plain_ids, plain_batch, plain_logits = decoder_view(0.0, 0.0)
    dropped_ids, dropped_batch, dropped_logits = decoder_view(1.0, 0.0)
    distracted_ids, distracted_batch, distracted_logits = decoder_view(0.0, 1.0)
    assert [row.tolist() for row in plain_ids] == neighbours.tolist()
    assert all(len(row) == 0 for row in dropped_ids)
    assert all(not set(row.tolist()) & set(owners) for row, owners in zip(distracted_ids, datastore["owners"]))
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in zip(distracted_ids, plain_ids))
    if fusion == "prompt":  # the retrieved captions are in the decoder's input
        prompt = processor.tokenizer.decode(plain_batch["input_ids"][0], skip_special_tokens=True)
        assert prompt.startswith("similar images show") and "this image shows" in prompt
        assert processor.tokenizer.decode(dropped_batch["input_ids"][0], skip_special_tokens=True).startswith("this image shows")
        assert not torch.equal(distracted_batch["input_ids"], plain_batch["input_ids"])
    else:  # the retrieved embeddings are in the states the decoder cross-attends to
        assert dropped_batch["retrieved_embeds"].shape[1] == 0
        assert not torch.equal(distracted_batch["retrieved_embeds"], plain_batch["retrieved_embeds"])
    assert not torch.allclose(dropped_logits, plain_logits) and not torch.allclose(distracted_logits, plain_logits)


def test_incremental_decoding_matches_a_full_forward_with_left_padded_prompts(tokenizer, datastore, pixel_values):
    model = build_model(tokenizer, datastore, fusion="prompt").eval()
    from processing.processing_rag_captioner import encode_decoder_inputs

    retrieved = [model.retriever.captions[:3], [], model.retriever.captions[5:6]]
    inputs = encode_decoder_inputs(tokenizer, ["a red circle", "a big blue star on the left", "a box"], retrieved, 30)
    input_ids, attention_mask = torch.tensor(inputs["input_ids"]), torch.tensor(inputs["attention_mask"])
    assert (attention_mask[:, 0] == 0).any()  # some prompts are left-padded
    states, mask, _ = model.fuse(model.get_image_tokens(pixel_values[:3]))
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=states,
                     encoder_attention_mask=mask).logits
        cache, steps, prefix = None, [], 20
        out = model(input_ids=input_ids[:, :prefix], attention_mask=attention_mask[:, :prefix],
                    encoder_hidden_states=states, encoder_attention_mask=mask, use_cache=True)
        cache, steps = out.cache, [out.logits]
        for position in range(prefix, input_ids.shape[1]):
            out = model(input_ids=input_ids[:, position : position + 1], attention_mask=attention_mask[:, : position + 1],
                        encoder_hidden_states=states, encoder_attention_mask=mask, use_cache=True, cache=cache)
            cache = out.cache
            steps.append(out.logits)
    real = attention_mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
def test_cached_generation_equals_uncached(trained, pixel_values, num_beams):
    cached = trained.generate(pixel_values=pixel_values, num_beams=num_beams)
    uncached = trained.generate(pixel_values=pixel_values, num_beams=num_beams, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] <= MAX_CAPTION_TOKENS + 1 and (cached[:, 0] != trained.config.decoder_config.bos_token_id).all()


def test_generation_searches_the_datastore_itself(trained, pixel_values, processor):
    found = trained.retrieve(pixel_values)
    searched = trained.generate(pixel_values=pixel_values)
    torch.testing.assert_close(searched, trained.generate(pixel_values=pixel_values, retrieved_ids=found.ids))
    torch.testing.assert_close(searched, trained.generate(pixel_values=pixel_values, retrieved_captions=found.captions))
    if trained.config.fusion == "concat":
        explicit = trained.retrieval_embeddings(retrieved_ids=found.ids)
        torch.testing.assert_close(searched, trained.generate(pixel_values=pixel_values, **explicit))


def test_the_overfitted_captioner_reads_image_and_retrieval(trained, pixel_values, processor, shapes, datastore):
    neighbours = own_excluded_neighbours(trained, datastore, pixel_values)
    captions = processor.batch_decode(trained.generate(pixel_values=pixel_values, retrieved_ids=neighbours))
    references = [image_captions[0] for image_captions in shapes["captions"]]
    assert sum(c == r for c, r in zip(captions, references)) >= NUM_IMAGES - 2
    without = processor.batch_decode(trained.generate(pixel_values=pixel_values, retrieved_captions=[[]] * NUM_IMAGES))
    shuffled = processor.batch_decode(trained.generate(pixel_values=pixel_values.flip(0), retrieved_ids=neighbours))
    assert without != captions and shuffled != captions


def test_batched_prompt_generation_equals_one_image_at_a_time(trained, pixel_values):
    if trained.config.fusion != "prompt":
        pytest.skip("left-padded prompts are the 'prompt' fusion's")
    retrieved = [trained.retriever.captions[:3], [], trained.retriever.captions[7:8]]
    batched = trained.generate(pixel_values=pixel_values[:3], retrieved_captions=retrieved, max_new_tokens=6, min_new_tokens=6)
    for row in range(3):
        alone = trained.generate(pixel_values=pixel_values[row : row + 1], retrieved_captions=retrieved[row : row + 1],
                                 max_new_tokens=6, min_new_tokens=6)
        assert torch.equal(alone[0], batched[row])


def test_generation_input_errors(trained, pixel_values):
    with pytest.raises(ValueError, match="at most one of"):
        trained.generate(pixel_values=pixel_values, retrieved_captions=[[]] * NUM_IMAGES, retrieved_ids=[[0]] * NUM_IMAGES)
    with pytest.raises(ValueError, match="has 2 entries for 12 images"):
        trained.generate(pixel_values=pixel_values, retrieved_captions=[[], []])
    with pytest.raises(ValueError, match="needs pixel_values"):
        trained.generate()
    empty = RagCaptionerModel(trained.config)
    with pytest.raises(ValueError, match="datastore is empty"):
        empty.generate(pixel_values=pixel_values)


def test_lambda_schedule_warms_up_then_decays():
    values = [retriever_lambda_schedule(step, 100, peak=0.5, warmup_ratio=0.1) for step in range(101)]
    assert values[0] == 0.0 and values[10] == pytest.approx(0.5) and values[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a <= b for a, b in zip(values[:10], values[1:11])) and all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[55] == pytest.approx(0.25)


# ----------------------------------------------------------------------------------------------------- save / load


def test_save_and_load_keep_weights_index_datastore_and_tokenizers(trained, pixel_values, tmp_path):
    trained.save_pretrained(tmp_path)
    config = trained.config
    for name in (config.index_file_name, config.datastore_file_name, config.retriever_tokenizer_folder,
                 config.decoder_tokenizer_folder):
        assert (tmp_path / name).exists(), name
    reloaded = RagCaptionerModel.from_pretrained(tmp_path).eval()
    assert reloaded.retriever.captions == trained.retriever.captions
    assert reloaded.retriever_tokenizer is not None and reloaded.decoder_tokenizer is not None
    assert not any(p.requires_grad for p in reloaded.vlp.parameters())
    assert not any(p.requires_grad for p in reloaded.decoder.transformer.h[0].parameters())
    assert reloaded.decoder.lm_head.weight is reloaded.decoder.transformer.wte.weight
    assert torch.equal(reloaded.generate(pixel_values=pixel_values), trained.generate(pixel_values=pixel_values))
    (tmp_path / config.index_file_name).unlink()
    with pytest.raises(FileNotFoundError, match="config.index_file_name"):
        RagCaptionerModel.from_pretrained(tmp_path)


def test_push_from_save_pretrained_is_redirected_to_the_one_commit_push(trained, tmp_path):
    with pytest.raises(ValueError, match="hf-mm-push"):
        trained.save_pretrained(tmp_path, push_to_hub=True)


def test_from_dual_encoder_wraps_a_saved_dual_encoder(tokenizer, tmp_path):
    vlp = VLPModel(tiny_vlp_config(sequence_config=None, text_config=tiny_text_config(vocab_size=30522, hidden_size=32, num_layers=1)))
    folder = save_for_hub(vlp, VLPProcessor(load_image_processor(None, IMAGE_SIZE), tokenizer), tmp_path / "vlp")
    decoder_config = tiny_config().decoder_config
    model = RagCaptionerModel.from_dual_encoder(folder, decoder_config=decoder_config, fusion="prompt", num_retrieved=2)
    assert model.config.fusion == "prompt" and model.config.num_retrieved == 2
    for name, value in vlp.state_dict().items():
        assert torch.equal(model.vlp.state_dict()[name], value), name
    assert model.retriever_tokenizer.vocab == tokenizer.vocab and model.decoder_tokenizer is model.retriever_tokenizer
    assert not any(p.requires_grad for p in model.vlp.parameters())


def test_from_dual_encoder_warm_starts_the_decoder_from_a_causal_lm(tokenizer, tmp_path):
    """A pretrained GPT-2 (here a tiny one saved locally, as `gpt2` from the Hub) keeps its weights and gains
    freshly initialised cross-attention; its folder's tokenizer becomes the decoder's."""
    vlp = VLPModel(tiny_vlp_config(sequence_config=None, text_config=tiny_text_config(vocab_size=30522, hidden_size=32, num_layers=1)))
    vlp_folder = save_for_hub(vlp, VLPProcessor(load_image_processor(None, IMAGE_SIZE), tokenizer), tmp_path / "vlp")
    pretrained = GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    pretrained.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    model = RagCaptionerModel.from_dual_encoder(vlp_folder, decoder_model_name_or_path=str(tmp_path / "gpt2"))
    decoder = model.decoder.transformer
    assert torch.equal(decoder.wte.weight, pretrained.transformer.wte.weight)
    assert torch.equal(decoder.h[1].attn.c_attn.weight, pretrained.transformer.h[1].attn.c_attn.weight)
    assert hasattr(decoder.h[1], "crossattention") and not hasattr(pretrained.transformer.h[1], "crossattention")
    assert not any(p.requires_grad for p in decoder.h[0].parameters()) and decoder.h[1].crossattention.c_attn.weight.requires_grad
    assert (model.config.decoder_config.bos_token_id, model.config.decoder_config.eos_token_id) == (101, 102)
    assert model.decoder_tokenizer.vocab == tokenizer.vocab


def tiny_clip_folder(tokenizer, folder) -> CLIPModel:
    """A tiny CLIP checkpoint saved as one from the Hub is (weights, config, tokenizer, image processor), so the
    captioner loads it through the same `from_pretrained` calls as `openai/clip-vit-base-patch32`."""
    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=64, bos_token_id=101, eos_token_id=102,
                             pad_token_id=0),
            vision_config=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=1, num_attention_heads=2),
            projection_dim=16,
        )
    ).eval()
    clip.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    load_image_processor(None, IMAGE_SIZE).save_pretrained(folder)
    return clip


def test_a_clip_checkpoint_is_a_retriever_as_it_was_pretrained(tokenizer, datastore, pixel_values, tmp_path):
    """SmallCap retrieves with CLIP itself: the datastore holds CLIP's text embeddings, the query is CLIP's image
    embedding, the decoder reads CLIP's vision tokens, and the saved captioner reloads as it was."""
    clip = tiny_clip_folder(tokenizer, tmp_path / "clip")
    model = RagCaptionerModel.from_dual_encoder(tmp_path / "clip", decoder_config=tiny_config().decoder_config).eval()
    assert isinstance(model.config.retriever_config, CLIPConfig) and model.config.retriever_config.projection_dim == 16
    assert not any(p.requires_grad for p in model.vlp.parameters())
    for name, value in clip.state_dict().items():
        assert torch.equal(model.vlp.state_dict()[name], value), name
    image_embeddings = model.get_image_embeddings(model.get_image_tokens(pixel_values))
    expected = torch.nn.functional.normalize(clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    torch.testing.assert_close(image_embeddings, expected)
    captions = datastore["captions"][:3]
    text = tokenizer(captions, padding=True, return_token_type_ids=False, return_tensors="pt")
    expected = torch.nn.functional.normalize(clip.get_text_features(**text).pooler_output, dim=-1)
    torch.testing.assert_close(model.embed_captions(captions), expected)

    model.retriever.build(datastore["captions"], batch_size=16, show_progress=False)
    assert model.retriever.dim == 16
    sequences = model.generate(pixel_values=pixel_values)
    model.save_pretrained(tmp_path / "captioner")
    reloaded = RagCaptionerModel.from_pretrained(tmp_path / "captioner").eval()
    assert isinstance(reloaded.config.retriever_config, CLIPConfig) and isinstance(reloaded.vlp, CLIPModel)
    np.testing.assert_array_equal(reloaded.retrieve(pixel_values).ids, model.retrieve(pixel_values).ids)
    assert torch.equal(reloaded.generate(pixel_values=pixel_values), sequences)
    with pytest.raises(ValueError, match=r"search_dim 8 is not one of the retriever's trained Matryoshka dims \[16\]"):
        RagCaptionerModel.from_dual_encoder(tmp_path / "clip", decoder_config=model.config.decoder_config, search_dim=8)


def test_a_retriever_that_is_neither_vlp_nor_clip_is_refused_by_name(tmp_path):
    GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'gpt2' model; the retriever must be this project's VLP dual encoder"):
        RagCaptionerModel.from_dual_encoder(tmp_path)


LOAD_SCRIPT = """
import numpy as np
import torch
from transformers import AutoModel, AutoProcessor

checkpoint, images_path, output_path = sys.argv[1:]
model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
pixel_values = processor(images=list(np.load(images_path)))["pixel_values"]
sequences = model.generate(pixel_values=pixel_values, num_beams=2)
retrieved = model.retrieve(pixel_values)
new_ids = model.retriever.add(["a purple ring in the top left corner"])
torch.save(
    {
        "classes": [type(obj).__module__ + "." + type(obj).__name__ for obj in (model, processor, model.retriever)],
        "sequences": sequences,
        "captions": processor.batch_decode(sequences),
        "retrieved_ids": retrieved.ids,
        "new_ids": list(new_ids),
        "datastore_size": len(model.retriever),
    },
    output_path,
)
"""


def test_hub_folder_captions_with_retrieval_in_a_fresh_process(trained, processor, shapes, pixel_values, tmp_path):
    checkpoint = save_for_hub(trained, processor, tmp_path / "rag")
    assert (checkpoint / trained.config.index_file_name).is_file() and (checkpoint / "modeling_retriever.py").is_file()
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_rag_captioner.RagCaptionerModel"
    images_path, output_path = tmp_path / "images.npy", tmp_path / "outputs.pt"
    np.save(images_path, np.stack([np.asarray(image) for image in shapes["image"]]))
    run_outside_project(LOAD_SCRIPT, [checkpoint, images_path, output_path], tmp_path)
    loaded = torch.load(output_path, weights_only=False)
    assert [name.rpartition(".")[2] for name in loaded["classes"]] == [
        "RagCaptionerModel", "RagCaptionerProcessor", "CaptionRetriever"
    ]
    assert all(name.startswith("transformers_modules.") for name in loaded["classes"])
    assert torch.equal(loaded["sequences"], trained.generate(pixel_values=pixel_values, num_beams=2))
    np.testing.assert_array_equal(loaded["retrieved_ids"], trained.retrieve(pixel_values).ids)
    assert loaded["captions"] and all(loaded["captions"])
    size = len(trained.retriever)
    assert loaded["new_ids"] == [size] and loaded["datastore_size"] == size + 1


def test_hub_folder_with_a_clip_retriever_loads_in_a_fresh_process(
    tokenizer, processor, shapes, datastore, pixel_values, tmp_path
):
    tiny_clip_folder(tokenizer, tmp_path / "clip")
    model = RagCaptionerModel.from_dual_encoder(tmp_path / "clip", decoder_config=tiny_config().decoder_config).eval()
    model.retriever.build(datastore["captions"], batch_size=16, show_progress=False)
    checkpoint = save_for_hub(model, processor, tmp_path / "rag")
    images_path, output_path = tmp_path / "images.npy", tmp_path / "outputs.pt"
    np.save(images_path, np.stack([np.asarray(image) for image in shapes["image"]]))
    run_outside_project(LOAD_SCRIPT, [checkpoint, images_path, output_path], tmp_path)
    loaded = torch.load(output_path, weights_only=False)
    assert torch.equal(loaded["sequences"], model.generate(pixel_values=pixel_values, num_beams=2))
    np.testing.assert_array_equal(loaded["retrieved_ids"], model.retrieve(pixel_values).ids)
    assert loaded["datastore_size"] == len(model.retriever) + 1


# ----------------------------------------------------------------------------------------------------- LoRA


def test_decoder_lora_touches_only_layers_from_one_up(trained, processor, shapes, datastore, pixel_values, tmp_path):
    base = RagCaptionerModel(trained.config)
    base.load_state_dict(trained.state_dict())
    peft_model = apply_lora(base, {}, first_layer={"decoder": 1}, r=4, alpha=8)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert all(".decoder.transformer.h.1." in name or ".decoder.transformer.h.2." in name for name in trainable)
    frozen_before = {name: p.detach().clone() for name, p in peft_model.named_parameters() if not p.requires_grad}
    # The new model has no datastore; the trained one's retrieval gives the same batch.
    batch = training_batch(trained, processor, shapes, datastore, pixel_values, own_excluded_neighbours(trained, datastore, pixel_values))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = peft_model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(p, frozen_before[name]) for name, p in peft_model.named_parameters() if not p.requires_grad)
    moved = [name for name, p in peft_model.named_parameters() if p.requires_grad and "lora_B" in name and p.abs().sum() > 0]
    assert moved


# ----------------------------------------------------------------------------------------------------- processor


def test_processor_accepts_any_image_mode_and_size(processor):
    images = [
        Image.new("L", (50, 20), 128),
        Image.new("RGBA", (32, 32), (255, 0, 0, 128)),
        Image.new("P", (40, 70)),
        np.zeros((24, 24, 3), dtype=np.uint8),
    ]
    out = processor(images=images, text=["a", "b c", "d", "e f g"])
    assert out["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape


def test_processor_token_layout(processor, tokenizer):
    out = processor(text=["a red circle", "a big blue star"], retrieved_captions=[["a red disc", "a red ring"], []])
    ids, labels, mask = out["input_ids"], out["labels"], out["attention_mask"]
    first = tokenizer.decode(ids[0][mask[0].bool()])
    assert first == "[CLS] similar images show a red disc. a red ring. this image shows a red circle [SEP]"
    second = ids[1][mask[1].bool()]
    assert tokenizer.decode(second) == "[CLS] this image shows a big blue star [SEP]"
    assert mask[1, 0] == 0  # the shorter prompt is left-padded, so both captions start at the same position
    caption_start = (labels[0] != -100).nonzero()[0].item()
    assert caption_start == (labels[1] != -100).nonzero()[0].item()
    assert tokenizer.decode(ids[0, caption_start:][labels[0, caption_start:] != -100]) == "a red circle [SEP]"
    plain = processor(text=["a red circle"])
    assert tokenizer.decode(plain["input_ids"][0]) == "[CLS] a red circle [SEP]"
    assert plain["labels"][0, 0] == -100 and (plain["labels"][0, 1:] == plain["input_ids"][0, 1:]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(text=["a cat", "  "]), ValueError, "caption 1 is empty"),
        (dict(images=[Image.new("RGB", (8, 8)), "not an image"]), TypeError, "Image 1 is a str"),
        (dict(images=[Image.new("RGB", (8, 8))], text=["a", "b"]), ValueError, "different batch sizes"),
        (dict(text=["a", "b"], retrieved_captions=[["x"]]), ValueError, "one list of captions per sample"),
        (dict(text=["a"], retrieved_captions=[["fine", ""]]), ValueError, r"retrieved_captions\[0\]\[1\]"),
        (dict(text=["a"], retrieved_captions=["not a list"]), TypeError, r"retrieved_captions\[0\] is a str"),
        (dict(retrieved_captions=[["x"]]), ValueError, "go with the target captions"),
        (dict(), ValueError, "Pass images"),
    ],
)
def test_processor_names_the_bad_item(processor, kwargs, error, message):
    with pytest.raises(error, match=message):
        processor(**kwargs)
