"""A loaded GGUF model: weights (read into huge pages, or memory-mapped), vocabulary, and token
<-> text conversion.

One `Model` can back several contexts (a `BatchEngine` for generation, an `Embedder`). Loading
blocks for as long as the weights take to map, so the service calls it in a worker thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

import llama_cpp

from engine import cpu_backend, huge_pages
from engine.llama_log import LOGGER_NAME, init_llama

log = logging.getLogger(__name__)


class ModelLoadFailed(ValueError):
    """llama.cpp refused the file; the message carries llama.cpp's own reason."""


class _ErrorCollector(logging.Handler):
    """Collects llama.cpp's error lines logged by one thread while it loads a model."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage())


def _progress(advice: huge_pages.LoadAdvice | None) -> llama_cpp.llama_progress_callback:
    """The load's progress callback: at its first call (buffers mapped, no tensor read yet) the
    new buffers are advised into huge pages. It never stops the load, and never raises into C."""

    def progress(_fraction: float, _user: ctypes.c_void_p) -> bool:
        if advice is not None:
            try:
                advice.advise()
            except Exception:  # an unreadable /proc: the load goes on in small pages
                log.debug("huge page advice failed", exc_info=True)
        return True

    return llama_cpp.llama_progress_callback(progress)


class Model:
    """A llama.cpp model plus the vocabulary facts the engine needs on every token."""

    def __init__(self, path: Path, handle: llama_cpp.llama_model_p) -> None:
        self.path = path
        self._handle: llama_cpp.llama_model_p | None = handle
        # How the weights were loaded ("mmap", or "read" into memory) and how many of their bytes
        # sit in huge pages (for the load log and tests; 0 when mapped).
        self.load_mode = "mmap"
        self.huge_bytes = 0
        self.vocab = llama_cpp.llama_model_get_vocab(handle)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(handle)
        self.n_embd: int = llama_cpp.llama_model_n_embd(handle)
        self.n_layer: int = llama_cpp.llama_model_n_layer(handle)
        self.has_encoder: bool = bool(llama_cpp.llama_model_has_encoder(handle))
        self.bos: int = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos: int = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.add_eos: bool = bool(llama_cpp.llama_vocab_get_add_eos(self.vocab))
        self._pieces: list[bytes | None] = [None] * self.n_vocab
        self._special_pieces: dict[int, bytes] = {}
        self._eog = [False] * self.n_vocab
        for tok in range(self.n_vocab):
            if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                self._eog[tok] = True
        self.eog_tokens: frozenset[int] = frozenset(t for t, e in enumerate(self._eog) if e)
        template = llama_cpp.llama_model_chat_template(handle, None)
        self.chat_template: str | None = template.decode("utf-8", "replace") if template else None
        self.architecture: str = self.meta("general.architecture") or ""
        pooling = self.meta(f"{self.architecture}.pooling_type")
        self.pooling_type: int | None = int(pooling) if pooling not in (None, "") else None
        self.bos_text: str = self._special_text(self.bos)
        self.eos_text: str = self._special_text(self.eos)

    @classmethod
    def load(
        cls, path: Path | str, *, n_gpu_layers: int = 0, use_mmap: bool | None = None
    ) -> Model:
        """Load the weights (blocking). Raises ModelLoadFailed with llama.cpp's reason.

        `use_mmap` None (Ollama's "automatic"): read into memory in huge pages where the kernel
        offers them (see huge_pages), else memory-mapped; True maps, False reads."""
        init_llama()
        try:
            cpu_backend.load()  # the CPU variant chosen at start-up, or the best that runs
        except cpu_backend.CpuBackendError as exc:
            raise ModelLoadFailed(f"unable to load model {path}: {exc}") from None
        path = Path(path)
        if not path.is_file():
            raise ModelLoadFailed(f"model file not found: {path}")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        advice = None
        huge = huge_pages.available()
        if use_mmap is None:
            use_mmap = not huge
        if not use_mmap:
            params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
            if huge:
                advice = huge_pages.LoadAdvice()
        callback = _progress(advice)  # referenced until the load returns
        params.progress_callback = callback
        collector = _ErrorCollector()
        logger = logging.getLogger(LOGGER_NAME)
        logger.addHandler(collector)
        try:
            handle = llama_cpp.llama_model_load_from_file(os.fsencode(path), params)
        finally:
            logger.removeHandler(collector)
        if not handle:
            reason = "; ".join(collector.lines) or "llama.cpp could not load the model"
            raise ModelLoadFailed(f"unable to load model {path}: {reason}")
        model = cls(path, handle)
        model.load_mode = "mmap" if use_mmap else "read"
        if advice is not None:
            model.huge_bytes, advised = advice.huge_bytes()
            log.info(
                "%s: weights read into memory, %d MiB of the %d advised in 2 MiB pages",
                path.name,
                model.huge_bytes >> 20,
                advised >> 20,
            )
        return model

    @property
    def handle(self) -> llama_cpp.llama_model_p:
        if self._handle is None:
            raise RuntimeError("model is closed")
        return self._handle

    def close(self) -> None:
        """Free the weights. Idempotent; contexts using this model must be closed first."""
        handle, self._handle = self._handle, None
        if handle is not None:
            llama_cpp.llama_model_free(handle)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as llama.cpp renders it (a string), or None if absent."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self.handle, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Tokens of `text`; `add_special` adds BOS/EOS as the model's tokenizer says."""
        data = text.encode("utf-8", "replace")  # a lone surrogate from JSON becomes "?"
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
            if n < 0:
                raise ValueError("tokenization failed")
        return buf[:n]

    def token_to_piece(self, token: int) -> bytes:
        """The bytes a token stands for, cached per token.

        Control tokens render as their text ("<start_of_turn>", "<think>"), as in Ollama's runner,
        so downstream parsers (thinking, tool calls) see them; the engine never emits EOG text.
        """
        piece = self._pieces[token]
        if piece is None:
            piece = self._piece(token, special=True)
            self._pieces[token] = piece
        return piece

    def _piece(self, token: int, *, special: bool) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def _special_text(self, token: int) -> str:
        if token < 0 or token >= self.n_vocab:
            return ""
        return self._piece(token, special=True).decode("utf-8", "replace")

    def detokenize(self, tokens: list[int]) -> str:
        """Text of a token list (control tokens included); invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.token_to_piece(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        """End-of-generation token (EOS, EOT, <end_of_turn>...)."""
        return self._eog[token]

    def token_text(self, token: int) -> str:
        """A token's text with special tokens rendered (for templates and debugging)."""
        return self._special_text(token)
