"""SentencePiece (`tokenizer.ggml.model = llama`), merging as llama.cpp's llm_tokenizer_spm does.

Spaces become "▁"; the text is split into characters, then the adjacent pair whose concatenation is the
token of highest score is merged (leftmost on a tie) until no pair forms a token. Every merge makes a
token, so a final symbol that is not one is a single character: it falls back to its `<0xNN>` byte tokens.
(llama.cpp's `resegment` also splits symbols back along their merges; that path never runs, for the
same reason.)
"""

from __future__ import annotations

import heapq

from ..errors import TokenizerError
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
        symbols = list(text)
        n = len(symbols)
        if n == 0:
            return []
        prev = list(range(-1, n - 1))
        nxt = [*range(1, n), -1]
        token_to_id = self.vocab.token_to_id
        scores = self.scores
        heap: list[tuple[float, int, int, int]] = []  # (-score, left, right, merged length)

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = symbols[left] + symbols[right]
            token = token_to_id.get(merged)
            if token is None:
                return
            heapq.heappush(heap, (-scores[token], left, right, len(merged)))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not symbols[left] or not symbols[right] or len(symbols[left]) + len(symbols[right]) != size:
                continue  # outdated: one side has merged since
            symbols[left] += symbols[right]
            symbols[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])

        out: list[int] = []
        byte_ids = self.byte_ids
        i = 0
        while i != -1:
            token = token_to_id.get(symbols[i])
            if token is not None:
                out.append(token)
            else:
                out.extend(byte_ids[b] for b in symbols[i].encode("utf-8", "surrogateescape"))
            i = nxt[i]
        return out
