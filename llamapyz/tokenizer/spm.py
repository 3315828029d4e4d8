"""SentencePiece (`tokenizer.ggml.model = llama`), merging as llama.cpp's llm_tokenizer_spm does.

Spaces become "▁"; the text is split into characters, then the adjacent pair whose concatenation is the
token of highest score is merged (leftmost on a tie) until no pair forms a token. Every merge makes a
token, so a final symbol that is not one is a single character: it falls back to its `<0xNN>` byte tokens.
(llama.cpp's `resegment` also splits symbols back along their merges; that path never runs, for the
same reason.)
"""

from __future__ import annotations

from ..errors import TokenizerError
from .merge import merge_pairs
from .vocab import Vocab

SPACE = "\u2581"  # ▁


class SPMEncoder:
    def __init__(self, vocab: Vocab) -> None:
        if vocab.scores is None:
            raise TokenizerError("a SentencePiece (llama) tokenizer needs tokenizer.ggml.scores")
        self.vocab = vocab
        self.scores = vocab.scores.tolist()
        token_to_id = vocab.token_to_id
        self.byte_ids: list[int] = []
        for b in range(256):
            token = token_to_id.get(f"<0x{b:02X}>", token_to_id.get(chr(b) if b < 128 else "", vocab.unk_id))
            if token is None:
                raise TokenizerError(f"byte {b:#04x} has no <0x{b:02X}> token and the vocab has no unknown token")
            self.byte_ids.append(token)

    def encode(self, text: str, add_space_prefix: bool) -> list[int]:
        if add_space_prefix:
            text = " " + text
        text = text.replace(" ", SPACE)
        token_to_id = self.vocab.token_to_id
        scores = self.scores

        def best_score_first(left: str, right: str) -> float | None:
            token = token_to_id.get(left + right)
            return None if token is None else -scores[token]

        out: list[int] = []
        for symbol in merge_pairs(list(text), best_score_first):
            token = token_to_id.get(symbol)
            if token is not None:
                out.append(token)
            else:
                out.extend(self.byte_ids[b] for b in symbol.encode("utf-8", "surrogateescape"))
        return out
