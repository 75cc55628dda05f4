"""Processor of the RAG captioner: images and captions (and, for the prompt variant, retrieved captions) in, tensors out.

The decoder's token layout is defined once here, for training (this processor) and for generation (the model writes
its prompts with `encode_decoder_inputs` too):

    [start] caption [end]                                                       fusion "concat"
    [start] similar images show c1 . c2 . … ck . this image shows caption [end]  fusion "prompt"
    [start] this image shows caption [end]                                      fusion "prompt", nothing retrieved

Only the caption and [end] are predicted (labels elsewhere are -100).
"""

from collections.abc import Iterable, Sequence

from transformers import BatchFeature, BertTokenizer, ProcessorMixin

from .processing_vlp import validate_images, validate_texts

PROMPT_PREFIX = "similar images show"
PROMPT_SEPARATOR = "."
PROMPT_SUFFIX = "this image shows"


def decoder_special_ids(tokenizer) -> tuple[int, int, int]:
    """`(start, end, pad)` ids of a decoder vocabulary: [CLS]/[SEP]/[PAD] in BERT-style WordPiece vocabularies,
    bos/eos in GPT-2's (which has no pad token: eos pads, the attention mask hides it)."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has neither [CLS]/[SEP] nor bos/eos tokens; the decoder needs a start and an "
            "end token."
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return start, end, pad


def validate_retrieved_captions(retrieved_captions, expected: int) -> list[list[str]]:
    """One list of caption strings (possibly empty) per sample, or an error naming the bad entry."""
    if not isinstance(retrieved_captions, (list, tuple)) or len(retrieved_captions) != expected:
        count = len(retrieved_captions) if isinstance(retrieved_captions, (list, tuple)) else "not a list"
        raise ValueError(
            f"retrieved_captions must hold one list of captions per sample ({expected}), got {count}; pass [] for a "
            "sample without retrieval."
        )
    for sample, captions in enumerate(retrieved_captions):
        if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
            raise TypeError(f"retrieved_captions[{sample}] is a {type(captions).__name__}; pass a list of captions.")
        for position, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(
                    f"retrieved_captions[{sample}][{position}] is {caption!r}; retrieved captions must be non-empty strings."
                )
    return [list(captions) for captions in retrieved_captions]


def encode_decoder_inputs(
    tokenizer,
    captions: list[str] | None,
    retrieved_captions: list[list[str]] | None,
    max_caption_length: int,
) -> dict[str, list[list[int]]]:
    """
    Token ids in the layout of the module docstring. Prompts are left-padded and captions right-padded, so every
    caption starts at the same position: the loss needs next-token scores only from there on (the decoder skips the
    vocabulary projection of the prompt), and generation continues all prompts at once.

    `captions=None` gives generation inputs (start and prompt only) without labels. Every caption, retrieved or
    target, is cut to `max_caption_length` tokens. Pieces are tokenized with a leading space, so a byte-level BPE
    (GPT-2) sees word starts as in running text.
    """
    start, end, pad = decoder_special_ids(tokenizer)

    def tokenize(texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        encoded = tokenizer(
            [" " + text.strip() for text in texts], add_special_tokens=False, truncation=True, max_length=max_caption_length
        )
        return encoded["input_ids"]

    prefix, separator, suffix = tokenize([PROMPT_PREFIX, PROMPT_SEPARATOR, PROMPT_SUFFIX])
    num_samples = len(captions) if captions is not None else len(retrieved_captions)
    prompts = [[start] for _ in range(num_samples)]
    if retrieved_captions is not None:
        for prompt, neighbours in zip(prompts, retrieved_captions):
            if neighbours:
                prompt += prefix + [token for ids in tokenize(neighbours) for token in (*ids, *separator)]
            prompt += suffix
    targets = [ids + [end] for ids in tokenize(captions)] if captions is not None else [[] for _ in prompts]

    prompt_width, target_width = max(map(len, prompts)), max(map(len, targets))
    encoded = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt, target in zip(prompts, targets):
        left, right = prompt_width - len(prompt), target_width - len(target)
        encoded["input_ids"].append([pad] * left + prompt + target + [pad] * right)
        encoded["attention_mask"].append([0] * left + [1] * (len(prompt) + len(target)) + [0] * right)
        encoded["labels"].append([-100] * prompt_width + target + [-100] * right)
    if captions is None:
        del encoded["labels"]
    return encoded


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = 1000) -> BertTokenizer:
    """An uncased WordPiece tokenizer of at most `vocab_size` tokens learnt from `captions` ([PAD]=0, [UNK]=1,
    [CLS]=2, [SEP]=3; [MASK] last). A decoder trained from scratch on one caption corpus needs few tokens: its output
    layer over the 30,522-token BERT vocabulary would cost most of a training step on CPU."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False
    )
    tokenizer.train_from_iterator(captions, trainer)
    return BertTokenizer(vocab=tokenizer.get_vocab(), do_lower_case=True)


class RagCaptionerProcessor(ProcessorMixin):
    r"""
    Wraps an image processor (RGB conversion, resizing, normalisation: images of any PIL mode or size) and the
    decoder's tokenizer.

    Args:
        image_processor: the VLP image tower's image processor (e.g. `CLIPImageProcessor`).
        tokenizer: the decoder's tokenizer; its start/end/pad ids must match the decoder config (see
            `decoder_special_ids`).
        max_caption_length (`int`, defaults to 40): target and retrieved captions are cut to this many tokens.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_caption_length: int = 40, **kwargs):
        if max_caption_length < 1:
            raise ValueError(f"max_caption_length must be positive, got {max_caption_length}.")
        self.max_caption_length = max_caption_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        retrieved_captions: Sequence[Sequence[str]] | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """
        Returns `pixel_values` for `images`, and `input_ids`, `attention_mask` and `labels` for the captions in
        `text`. With `retrieved_captions` (one list per caption, `[]` for none; the `"prompt"` fusion only) the
        captions are preceded by the retrieval prompt, whose tokens get label -100.
        """
        if retrieved_captions is not None and text is None:
            raise ValueError(
                "retrieved_captions go with the target captions (text); for generation pass them to model.generate."
            )
        if images is None and text is None:
            raise ValueError("Pass images, captions (text), or both.")
        data, batch_sizes = {}, {}
        if images is not None:
            images = validate_images(images)
            data.update(self.image_processor(images, return_tensors=return_tensors))
            batch_sizes["images"] = len(data["pixel_values"])
        if text is not None:
            captions = validate_texts(text)
            batch_sizes["captions"] = len(captions)
            retrieved = (
                validate_retrieved_captions(retrieved_captions, len(captions)) if retrieved_captions is not None else None
            )
            data.update(encode_decoder_inputs(self.tokenizer, captions, retrieved, self.max_caption_length))
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"Inputs have different batch sizes: {batch_sizes}; pass one caption per image.")
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Generated ids (`model.generate` returns the caption tokens only) to captions."""
        return [text.strip() for text in self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)]

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "labels"]


__all__ = [
    "PROMPT_PREFIX",
    "PROMPT_SEPARATOR",
    "PROMPT_SUFFIX",
    "RagCaptionerProcessor",
    "decoder_special_ids",
    "encode_decoder_inputs",
    "train_caption_tokenizer",
    "validate_retrieved_captions",
]
