"""Untrained miniature models of all four kinds with their processors, saved with `hub.save_for_hub`: what the pipeline
and demo tests load in another process. Outputs are arbitrary but deterministic (seed 0)."""

from pathlib import Path

import torch
from transformers import GPT2Config

from conftest import tiny_vlp_config
from configuration import MMCoTConfig, RagCaptionerConfig, SequenceEncoderConfig, Sign2TextConfig
from data.synthetic_scienceqa import make_scienceqa_problems
from data.synthetic_shapes import make_shapes_dataset
from hub import save_for_hub
from modeling import MMCoTForConditionalGeneration, RagCaptionerModel, Sign2TextModel, VLPModel
from processing import MMCoTProcessor, RagCaptionerProcessor, Sign2TextProcessor, VLPProcessor
from processing.processing_mmcot import format_prompt, format_target
from processing.tokenization_mmcot import train_unigram_tokenizer
from train.backbones import load_image_processor, tiny_text_config, tiny_vision_config

IMAGE_SIZE = 32
SIGN_FRAMES = 64


def vlp(tokenizer, **overrides) -> tuple[VLPModel, VLPProcessor]:
    """Image and sign-clip towers (21 keypoints × 2, frame features of 8)."""
    torch.manual_seed(0)
    config = tiny_vlp_config(text_config=tiny_text_config(vocab_size=len(tokenizer), hidden_size=32, num_layers=1), **overrides)
    processor = VLPProcessor(load_image_processor(None, IMAGE_SIZE), tokenizer, max_frames=SIGN_FRAMES, feature_dim=8)
    return VLPModel(config).eval(), processor


def sign2text(tokenizer) -> tuple[Sign2TextModel, Sign2TextProcessor]:
    """Keypoints only (21 × 2)."""
    torch.manual_seed(0)
    config = Sign2TextConfig(
        sequence_config=SequenceEncoderConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_frames=SIGN_FRAMES
        ),
        text_config=tiny_text_config(hidden_size=32, num_layers=1),
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_target_length=8, projection_dim=16,
    )
    return Sign2TextModel(config).eval(), Sign2TextProcessor(tokenizer, max_target_length=8, max_frames=SIGN_FRAMES)


def rag(tokenizer) -> tuple[RagCaptionerModel, RagCaptionerProcessor]:
    """A datastore of the captions of 8 embedded shapes pictures; the decoder writes at most 6 tokens."""
    torch.manual_seed(0)
    config = RagCaptionerConfig(
        retriever_config=tiny_vlp_config(
            sequence_config=None, text_config=tiny_text_config(vocab_size=len(tokenizer), hidden_size=32, num_layers=1)
        ),
        decoder_config=GPT2Config(
            vocab_size=len(tokenizer), n_positions=160, n_embd=32, n_layer=1, n_head=2, bos_token_id=101,
            eos_token_id=102, pad_token_id=0,
        ),
        num_retrieved=3, retrieval_projection_dim=32, max_caption_tokens=6,
    )
    model = RagCaptionerModel(config)
    model.set_tokenizers(tokenizer, tokenizer)
    captions = [caption for captions in make_shapes_dataset(8, seed=0, image_size=IMAGE_SIZE, captions_per_image=3)["captions"] for caption in captions]
    model.retriever.build(captions, batch_size=8, show_progress=False)
    model.generation_config.max_new_tokens = 6
    return model.eval(), RagCaptionerProcessor(load_image_processor(None, IMAGE_SIZE), tokenizer, max_caption_length=6)


def mmcot() -> tuple[MMCoTForConditionalGeneration, MMCoTProcessor]:
    """A 200-piece Unigram vocabulary learnt from embedded problems; rationales of at most 6 tokens."""
    problems, _, _ = make_scienceqa_problems({"train": 20}, seed=0, image_size=IMAGE_SIZE)
    tokenizer = train_unigram_tokenizer(
        [format_prompt(p, "answer", format_target(p, "rationale")) for p in problems.values()], vocab_size=200
    )
    torch.manual_seed(0)
    config = MMCoTConfig(
        text_config=dict(
            d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, vocab_size=len(tokenizer),
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        ),
        vision_config=tiny_vision_config(image_size=IMAGE_SIZE, patch_size=16, hidden_size=32, num_layers=1),
        max_rationale_tokens=6,
        max_answer_tokens=6,
    )
    return MMCoTForConditionalGeneration(config).eval(), MMCoTProcessor(load_image_processor(None, IMAGE_SIZE), tokenizer)


def build_all(tokenizer) -> dict[str, tuple]:
    """`{demo name: (model, processor)}` of every kind. Generation never writes a special token (so it runs to its
    token limit), and a page or pipeline showing nothing cannot pass for one showing what the model wrote."""
    built = {"vlp": vlp(tokenizer), "rag": rag(tokenizer), "sign2text": sign2text(tokenizer), "mmcot": mmcot()}
    for model, processor in built.values():
        if model.can_generate():
            model.generation_config.suppress_tokens = processor.tokenizer.all_special_ids
    return built


def save_all(built: dict[str, tuple], folder: Path) -> dict[str, Path]:
    """Each of `build_all`'s models saved under `folder / name`."""
    return {name: save_for_hub(model, processor, folder / name) for name, (model, processor) in built.items()}
