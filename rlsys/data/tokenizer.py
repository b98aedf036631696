"""A character-level tokenizer built with the `tokenizers` library and saved in Hugging Face format.

The embedded default never downloads anything: its tokenizer is made here from an alphabet, wrapped in
``PreTrainedTokenizerFast`` and saved with ``save_pretrained``, so ``AutoTokenizer.from_pretrained(dir)`` loads it
like any hub tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
DEFAULT_ALPHABET = "0123456789+-*=() "


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` plus pad/bos/eos/unk (ids 0–3)."""
    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def save_char_tokenizer(directory: str | Path, alphabet: str = DEFAULT_ALPHABET) -> Path:
    directory = Path(directory)
    build_char_tokenizer(alphabet).save_pretrained(directory)
    return directory
