"""Train a BERT-style WordPiece tokenizer on a caption corpus and wrap it as a transformers tokenizer.

The result is a `transformers.BertTokenizer` (in transformers 5 this is the `tokenizers`-backed class;
`BertTokenizerFast` is an alias of it) with [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, encoding
a caption as "[CLS] caption [SEP]". It saves with `save_pretrained` and loads offline with
`AutoTokenizer.from_pretrained`. Training is deterministic: the learned vocabulary is re-ordered
canonically and tie-breaking is pinned, so the same corpus gives the same ids in every process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

if TYPE_CHECKING:
    from transformers import BertTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION_PREFIX = "##"


def _canonical_order(token: str) -> tuple:
    """Single characters first (word-initial, then continuations), then longer pieces by length and text."""
    is_continuation = token.startswith(CONTINUATION_PREFIX)
    body = token[len(CONTINUATION_PREFIX) :] if is_continuation else token
    return (len(body) > 1, len(body), is_continuation, body)


def _continuation_pieces(tokenizer: Tokenizer, texts: list[str]) -> set[str]:
    """Every "##c" piece the trainer will create: characters after the first of each pre-tokenized word."""
    pieces = set()
    for text in texts:
        normalized = tokenizer.normalizer.normalize_str(text)
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized):
            pieces.update(CONTINUATION_PREFIX + char for char in word[1:])
    return pieces


def learn_wordpiece_vocab(
    texts: Iterable[str],
    vocab_size: int = 1000,
    min_frequency: int = 1,
    lowercase: bool = True,
) -> dict[str, int]:
    """The WordPiece vocabulary (token -> id, specials first) that `train_wordpiece_tokenizer` uses."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens; got {vocab_size}")
    texts = list(texts)
    if not texts:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] is {type(text).__name__}, expected str")

    # Same normalizer and pre-tokenizer as transformers' BertTokenizer, so training sees what encoding will see.
    trainee = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX))
    trainee.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    trainee.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # tokenizers creates the "##x" continuation pieces in hash-map order, and their ids break ties between
    # equally frequent merges, so the learned vocabulary can differ from run to run
    # (huggingface/tokenizers#1794). Declaring them up front, sorted, fixes their ids and hence the merges.
    # They are declared as trainer "special tokens" only for that; the tokenizer built from this vocabulary
    # treats them as ordinary pieces and only SPECIAL_TOKENS as special.
    continuation_pieces = sorted(_continuation_pieces(trainee, texts))
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS) + continuation_pieces,
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    trainee.train_from_iterator(texts, trainer=trainer, length=len(texts))

    learned = sorted((token for token in trainee.get_vocab() if token not in SPECIAL_TOKENS), key=_canonical_order)
    return {token: index for index, token in enumerate(list(SPECIAL_TOKENS) + learned)}


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    min_frequency: int = 1,
    lowercase: bool = True,
) -> BertTokenizer:
    """Learn a WordPiece vocabulary from `texts` and return it as a BERT-style transformers tokenizer.

    `vocab_size` counts the special tokens; it is exceeded only if the corpus' characters alone need more.
    Pieces seen fewer than `min_frequency` times are not merged. `lowercase` also sets `do_lower_case`.
    """
    from transformers import BertTokenizer  # imported here so learning a vocabulary needs only `tokenizers`

    vocab = learn_wordpiece_vocab(texts, vocab_size=vocab_size, min_frequency=min_frequency, lowercase=lowercase)
    return BertTokenizer(vocab=vocab, do_lower_case=lowercase)


__all__ = ["SPECIAL_TOKENS", "learn_wordpiece_vocab", "train_wordpiece_tokenizer"]
