"""The pair-merging loop both BPE and SentencePiece run, as llama.cpp's tokenizer sessions do."""

from __future__ import annotations

import heapq
from collections.abc import Callable

# priority of merging two adjacent symbols: lower merges first; None: the pair never merges
PairPriority = Callable[[str, str], "float | None"]


def merge_pairs(symbols: list[str], priority: PairPriority) -> list[str]:
    """Repeatedly merge the adjacent pair of lowest priority (leftmost on a tie) until no pair has one.

    Symbols live in a linked list over the input positions; a merged-away symbol becomes "". Queue entries
    remember the texts they were made for, so an entry whose sides have changed since is skipped (texts
    only grow, so a changed side never matches again)."""
    n = len(symbols)
    if n < 2:
        return symbols
    prev = list(range(-1, n - 1))
    nxt = [*range(1, n), -1]
    heap: list[tuple[float, int, str, str]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            p = priority(symbols[left], symbols[right])
            if p is not None:
                heapq.heappush(heap, (p, left, symbols[left], symbols[right]))

    for i in range(n - 1):
        push(i, i + 1)
    while heap:
        _, left, left_text, right_text = heapq.heappop(heap)
        right = nxt[left]
        if right < 0 or symbols[left] != left_text or symbols[right] != right_text:
            continue  # outdated: one side has merged since
        symbols[left] = left_text + right_text
        symbols[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])
    return [s for s in symbols if s]
