"""Prompt states kept in host RAM after their slot is reused (llama-server's `--cache-ram`).

A slot's prompt cache lives only as long as nothing else overwrites the slot. Before the engine
reuses a slot for an unrelated prompt, it copies the sequence's KV state (llama.cpp's
`llama_state_seq_get_data`) here with its tokens; a later prompt sharing a longer prefix with a
saved state than with any slot gets that state restored into its slot, so a system prompt shared
by many clients is computed once. The store is bounded in bytes and drops the least recently used
states first. Not thread-safe: the engine's one worker thread owns it.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class SavedPrompt:
    """One sequence's KV state as llama.cpp serialised it, and what it holds.

    `pos_min` is the sequence's first position still in the KV when saved (above 0 only for a
    sliding-window cache that dropped old cells); `logits` are those of the last prompt position
    with that prompt's length, as the slot cache keeps them, so a full hit samples as cold.
    """

    tokens: list[int]
    state: ctypes.Array[ctypes.c_uint8]
    pos_min: int = 0
    logits: tuple[int, np.ndarray] | None = None

    @property
    def nbytes(self) -> int:
        """Host memory this entry holds: the state, the kept logits and the token list."""
        return self.size(len(self.state), self.tokens, self.logits)

    @staticmethod
    def size(state_bytes: int, tokens: list[int], logits: tuple[int, np.ndarray] | None) -> int:
        """`nbytes` of an entry before it is made (so a state too big is never copied out)."""
        kept = logits[1].nbytes if logits is not None else 0
        return state_bytes + kept + 8 * len(tokens)


class PromptStore:
    """Saved prompt states, at most `limit` bytes in all, least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._entries: OrderedDict[int, SavedPrompt] = OrderedDict()  # by id() of the entry
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[SavedPrompt]:
        return iter(list(self._entries.values()))

    def fits(self, nbytes: int) -> bool:
        """Whether an entry of `nbytes` could be kept at all."""
        return 0 < nbytes <= self.limit

    def put(self, entry: SavedPrompt) -> bool:
        """Keep `entry` (the newest), dropping states it extends and then the oldest until it
        fits. Returns False, keeping nothing, when it is larger than the whole store."""
        if not self.fits(entry.nbytes):
            return False
        for key, old in list(self._entries.items()):
            if entry.tokens[: len(old.tokens)] == old.tokens:  # the new state holds it all
                self._drop(key)
        while self._entries and self.nbytes + entry.nbytes > self.limit:
            self._drop(next(iter(self._entries)))
        self._entries[id(entry)] = entry
        self.nbytes += entry.nbytes
        return True

    def take(self, entry: SavedPrompt) -> None:
        """Remove `entry`: it moves into a slot (saved again when that slot is reused)."""
        if id(entry) in self._entries:
            self._drop(id(entry))

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
