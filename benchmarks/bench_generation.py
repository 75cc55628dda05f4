"""Benchmark: generation speed of every decoder in the repository, with its key/value cache vs recomputing the
prefix, and against a transformers built-in encoder-decoder of the same size.

Decoders, at their config defaults (towers that only feed the decoder are left out: the encoder states are given):

- **Sign2Text**: its own transformer decoder over the frame states (`Sign2TextConfig`: width 512, 4 layers).
  Built-in: `BartForConditionalGeneration` with the same width, heads, layers, feed-forward and vocabulary.
- **RAG captioner**: a GPT-2 with cross-attention over the fused image + retrieval states (`RagCaptionerConfig`'s
  decoder: width 256, 3 layers), in both fusions: `"concat"` (retrieval in the cross-attended states, the decoder
  starts from one token) and `"prompt"` (the retrieved captions are a `num_retrieved x max_caption_tokens` = 160-token
  text prefix). Built-in: BART of the same width, heads, layers, feed-forward and vocabulary, from the same prefix.
- **Multimodal-CoT**: the T5 decoder under the gated fusion (`MMCoTConfig`'s T5). Built-in: the stock
  `T5ForConditionalGeneration` of that config.

Every run writes exactly `--new-tokens` tokens (`min_new_tokens` = `max_new_tokens`) for each of `--batch-size`
inputs (default 1: the latency case), greedy and beam search over `--beams` beams, from `--encoder-length` random encoder states given to `generate` (`encoder_outputs`;
for the RAG captioner, its fused `encoder_hidden_states`), so only the decoding is timed. Tokens/s counts the new
tokens of the returned sequences (beams are not counted separately). The recompute baseline is the same model's
`generate(use_cache=False)`, which runs the whole prefix at every step; "same tokens" says whether both wrote the
same sequence (they must, up to float rounding on near-ties).

Usage:
    python benchmarks/bench_generation.py [--new-tokens 64] [--beams 4] [--encoder-length 64] [--threads 1]
"""

from dataclasses import dataclass

import torch
import transformers
from transformers import BartConfig, BartForConditionalGeneration, GenerationMixin, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from common import apply_common_arguments, benchmark_parser, interleaved_median_seconds, machine_description, print_table


@dataclass
class Decoder:
    """A model and the call that makes it generate from given encoder states, plus its built-in counterpart."""

    name: str
    model: torch.nn.Module
    generate: callable
    builtin_name: str
    builtin_generate: callable


def bart_like(width: int, layers: int, heads: int, ffn: int, vocab_size: int, max_positions: int) -> BartForConditionalGeneration:
    config = BartConfig(
        vocab_size=vocab_size, d_model=width, encoder_layers=1, decoder_layers=layers, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_position_embeddings=max_positions,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, bos_token_id=101,
        eos_token_id=102, decoder_start_token_id=101, forced_bos_token_id=None, forced_eos_token_id=None,
    )
    return BartForConditionalGeneration(config).eval()


def encoder_decoder_call(model, batch: int, encoder_length: int, width: int, mask_name: str):
    """`generate` from random encoder states: the encoder is skipped, so only decoding is timed."""
    states = torch.randn(batch, encoder_length, width)
    mask = torch.ones(batch, encoder_length, dtype=torch.long)

    def generate(**kwargs):
        return model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), **{mask_name: mask}, **kwargs)

    return generate


def build_decoders(quick: bool, batch: int, encoder_length: int) -> list[Decoder]:
    from configuration import MMCoTConfig, RagCaptionerConfig, Sign2TextConfig
    from modeling import MMCoTForConditionalGeneration, RagCaptionerModel, Sign2TextModel
    from train.backbones import tiny_text_config

    text_tower = tiny_text_config(hidden_size=32, num_layers=1)  # the contrastive text encoder takes no part
    sign2text_overrides = dict(text_config=text_tower)
    rag_overrides = {}
    mmcot_overrides = {}
    if quick:
        sign2text_overrides.update(
            sequence_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=500,
        )
        rag_overrides = dict(decoder_config=dict(
            model_type="gpt2", vocab_size=500, n_positions=128, n_embd=32, n_layer=1, n_head=2, bos_token_id=101,
            eos_token_id=102, pad_token_id=0,
        ))
        mmcot_overrides = dict(text_config=dict(
            d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, vocab_size=200,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        ))
    decoders = []

    torch.manual_seed(0)
    sign2text = Sign2TextModel(Sign2TextConfig(**sign2text_overrides)).eval()
    config = sign2text.config
    width = config.sequence_config.hidden_size
    bart = bart_like(width, config.decoder_layers, config.decoder_attention_heads, config.decoder_ffn_dim,
                     config.vocab_size, config.max_target_length + 2)
    decoders.append(Decoder(
        f"Sign2Text (width {width}, {config.decoder_layers} layers)", sign2text,
        encoder_decoder_call(sign2text, batch, encoder_length, width, "frame_mask"),
        "BART", encoder_decoder_call(bart, batch, encoder_length, width, "attention_mask"),
    ))

    for fusion in ("concat", "prompt"):
        torch.manual_seed(0)
        rag = RagCaptionerModel(RagCaptionerConfig(fusion=fusion, **rag_overrides)).eval()
        gpt2 = rag.config.decoder_config
        # "prompt": the retrieved captions are a text prefix of num_retrieved x max_caption_tokens tokens
        prompt_length = 0 if fusion == "concat" else (8 if quick else rag.config.num_retrieved * rag.config.max_caption_tokens)
        prompt = torch.randint(gpt2.bos_token_id + 1, gpt2.vocab_size, (1, prompt_length)).expand(batch, -1)
        start = torch.cat([prompt, torch.full((batch, 1), gpt2.bos_token_id)], dim=1)
        states = torch.randn(batch, encoder_length, gpt2.n_embd)

        def rag_generate(rag=rag, start=start, states=states, **kwargs):
            # RagCaptionerModel.generate runs the image tower and the retrieval, then exactly this call
            generated = GenerationMixin.generate(
                rag, input_ids=start, attention_mask=torch.ones_like(start), encoder_hidden_states=states,
                encoder_attention_mask=torch.ones(batch, encoder_length, dtype=torch.long), **kwargs,
            )
            return generated[:, start.shape[1] - 1 :]  # the start token and the new ones, as for the others

        bart = bart_like(gpt2.n_embd, gpt2.n_layer, gpt2.n_head, gpt2.n_inner or 4 * gpt2.n_embd, gpt2.vocab_size, 512)
        builtin = encoder_decoder_call(bart, batch, encoder_length, gpt2.n_embd, "attention_mask")
        if prompt_length:  # the built-in reads the same prefix: BART's decoder starts from the prompt too

            def builtin(bart=bart, start=start, states=states, **kwargs):
                mask = torch.ones(batch, encoder_length, dtype=torch.long)
                generated = bart.generate(
                    encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask,
                    decoder_input_ids=start, **kwargs,
                )
                return generated[:, start.shape[1] - 1 :]

        name = f"RAG captioner GPT-2 (width {gpt2.n_embd}, {gpt2.n_layer} layers, {fusion}"
        name += f", {prompt_length}-token prompt)" if prompt_length else ")"
        decoders.append(Decoder(name, rag, rag_generate, "BART", builtin))

    torch.manual_seed(0)
    mmcot = MMCoTForConditionalGeneration(MMCoTConfig(**mmcot_overrides)).eval()
    t5_config = mmcot.config.text_config
    t5 = T5ForConditionalGeneration(t5_config).eval()
    decoders.append(Decoder(
        f"Multimodal-CoT T5 (width {t5_config.d_model}, {t5_config.num_decoder_layers} layers)", mmcot,
        encoder_decoder_call(mmcot, batch, encoder_length, t5_config.d_model, "attention_mask"),
        "T5", encoder_decoder_call(t5, batch, encoder_length, t5_config.d_model, "attention_mask"),
    ))
    return decoders


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--encoder-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1, help="inputs per generate call (tokens/s counts all)")
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    if args.quick:
        args.new_tokens, args.encoder_length = 8, 8
    transformers.logging.set_verbosity_error()  # max_new_tokens overriding a config's max_length is intended

    print(f"Machine: {machine_description()}")
    print(
        f"{args.new_tokens} new tokens, batch {args.batch_size}, encoder length {args.encoder_length}, fp32, no_grad; "
        f"median of {args.repeats} after a warm-up, the three runs of a row taking turns"
    )
    rows = []
    with torch.no_grad():
        for decoder in build_decoders(args.quick, args.batch_size, args.encoder_length):
            for search, beams in (("greedy", 1), (f"beam {args.beams}", args.beams)):
                settings = dict(
                    max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, num_beams=beams, do_sample=False
                )
                cached = decoder.generate(**settings, use_cache=True)
                new_tokens = cached.shape[1] - 1  # less the start token; per input
                same_tokens = torch.equal(cached, decoder.generate(**settings, use_cache=False))
                calls = {
                    "cache": lambda: decoder.generate(**settings, use_cache=True),
                    "recompute": lambda: decoder.generate(**settings, use_cache=False),
                    "builtin": lambda: decoder.builtin_generate(**settings, use_cache=True),
                }
                seconds = interleaved_median_seconds(calls, args.repeats)
                tokens_per_second = {label: args.batch_size * new_tokens / value for label, value in seconds.items()}
                rows.append([
                    decoder.name, search, new_tokens, tokens_per_second["recompute"], tokens_per_second["cache"],
                    tokens_per_second["cache"] / tokens_per_second["recompute"], "yes" if same_tokens else "no",
                    decoder.builtin_name,
                    tokens_per_second["builtin"], tokens_per_second["cache"] / tokens_per_second["builtin"],
                ])
    print_table(
        "Generation: tokens/s with the KV cache vs recomputing the prefix, and vs a built-in encoder-decoder",
        ["decoder", "search", "new tokens", "recompute tok/s", "cache tok/s", "cache / recompute", "same tokens", "built-in",
         "built-in tok/s", "ours / built-in"],
        rows,
    )


if __name__ == "__main__":
    main()
