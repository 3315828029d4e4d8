"""A text measured before it is tokenized. No token stands for more than `Tokenizer.longest_token_chars`
characters of text (a byte-level token's text has a character per byte of the text it stands for; a
SentencePiece token spells its text, "<0xNN>" for a byte), so a text of n characters is at least
ceil(n / longest_token_chars) tokens. A text whose bound already exceeds what it must fit in is refused
(400 `context_length_exceeded`) before tokenizing: tokenizing takes a worker thread holding the GIL, which
the event loop and every engine share (15 MiB took seconds), and a refusal costs only the length. A text
within the bound is tokenized, and its real count decides.
"""

from __future__ import annotations

from ..model.model import Model
from .schema import ApiError


def least_tokens(model: Model, n_chars: int) -> int:
    """The fewest tokens a text of `n_chars` characters can be (`longest_token_chars` is computed once per
    tokenizer)."""
    return -(-n_chars // max(1, model.tokenizer.longest_token_chars))


def check_text_fits(model: Model, n_chars: int, most: int, what: str, beyond: str, param: str) -> None:
    """Refuse a text of `n_chars` characters that cannot be `most` tokens or fewer. The message reads
    "{what} has N characters, so at least M tokens, {beyond}"."""
    least = least_tokens(model, n_chars)
    if least > most:
        raise ApiError(400, f"{what} has {n_chars} characters, so at least {least} tokens, {beyond}", param=param,
                       code="context_length_exceeded", n_prompt_tokens=least, n_ctx=model.n_ctx)
