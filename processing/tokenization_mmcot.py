"""An offline T5 tokenizer: a Unigram vocabulary trained with `tokenizers` on the training text, wrapped as T5's.

No pretrained vocabulary can be downloaded here, and a borrowed one (the project's uncased WordPiece) would lose
case. The Unigram model is what T5's SentencePiece vocabulary is, trained with the pre-tokenisation T5's tokenizer
applies, so the pieces match at encoding time; `T5Tokenizer(vocab=...)` then gives the T5 conventions (pad 0, `</s>`
1, unk 2, `</s>` appended) and saves and reloads like any T5 tokenizer.
"""

import json
import math
import string
from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import Unigram
from transformers import T5Tokenizer

T5_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
# Every printable ASCII character gets a piece, so a test text with a character the training text lacks (a digit,
# a bracket) is still spelled out instead of becoming <unk>.
_ALPHABET = sorted(set(string.printable) - set(string.whitespace))
_CLAUSE_END = ".,;:?!"


def train_unigram_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, em_iterations: int = 10, min_word_count: int = 2
) -> T5Tokenizer:
    """
    A cased T5 tokenizer whose Unigram vocabulary of at most `vocab_size` pieces is trained on `texts` (the prompts
    and targets the model will read and write). The trainer may return fewer pieces when the text is small: size
    the model by `len(tokenizer)`, not by `vocab_size`.

    `em_iterations` EM rounds run per pruning step (the trainer's `n_sub_iterations`, default 2 there). The trainer
    scores its seed pieces by the number of distinct words holding them, not by how often those words occur, so on
    a small, repetitive corpus it spells the most frequent words ("is", "the", "answer") in pieces. Words seen at
    least `min_word_count` times that are not pieces yet are therefore added whole, most frequent first while the
    budget lasts, each scored with its log-frequency, the Unigram model's own score: on the embedded data this halves
    the prompts (102 → 50 tokens) and lets the model copy an option as one token.
    """
    minimum = len(T5_SPECIAL_TOKENS) + len(_ALPHABET) + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (specials, printable ASCII, the space), got {vocab_size}.")
    texts = list(texts)
    backend = Tokenizer(Unigram())
    # T5Tokenizer's own pre-tokenisation, so the trained pieces are the ones it will look up.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=T5_SPECIAL_TOKENS,
        unk_token="<unk>",
        initial_alphabet=_ALPHABET,
        n_sub_iterations=em_iterations,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    vocab = [(piece, score) for piece, score in json.loads(backend.to_str())["model"]["vocab"]]
    if [piece for piece, _ in vocab[: len(T5_SPECIAL_TOKENS)]] != T5_SPECIAL_TOKENS:
        raise RuntimeError(f"The trained vocabulary starts with {vocab[:3]}; expected {T5_SPECIAL_TOKENS} at ids 0-2.")
    # Whole words without the punctuation that ends a clause, so "tall." is "▁tall" + "." and copies "▁tall".
    words = Counter(f"▁{word.rstrip(_CLAUSE_END)}" for text in texts for word in text.split() if word.rstrip(_CLAUSE_END))
    total = sum(words.values())
    known = {piece for piece, _ in vocab}
    missing = [(word, count) for word, count in words.most_common() if count >= min_word_count and word not in known]
    vocab += [(word, math.log(count / total)) for word, count in missing[: max(0, vocab_size - len(vocab))]]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


__all__ = ["train_unigram_tokenizer"]
