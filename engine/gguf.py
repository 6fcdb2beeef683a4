"""Read a GGUF file's header (metadata and tensor table) without loading any weights.

Used for `/api/show`, for capabilities, and for the memory estimate the scheduler needs before it
decides to load. Parsing is done by `engine.gguf_header` (strict, mmap-based, tenths of a second
on a 262k vocabulary); this module turns the raw header into the facts the service asks about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import LlamaFileType

from engine.gguf_header import read_gguf_header

# Bytes per KV-cache element for the cache types llama.cpp accepts (block size 32 for quants).
KV_BYTES_PER_ELEMENT = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says about a model; everything here is cheap to keep around."""

    path: Path
    file_size: int
    architecture: str
    metadata: dict[str, Any]
    tensors: list[tuple[str, str, tuple[int, ...]]] = field(repr=False)
    parameter_count: int

    def arch_value(self, key: str, default: Any = None) -> Any:
        """Metadata value of `<architecture>.<key>`."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def file_type(self) -> str | None:
        """Quantisation name from `general.file_type`, e.g. "Q4_K_M", "F16", "F32"."""
        value = self.metadata.get("general.file_type")
        if value is None:
            return None
        try:
            name = LlamaFileType(int(value)).name
        except ValueError:
            return f"unknown ({value})"
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")

    @property
    def context_length(self) -> int | None:
        return _int_or_none(self.arch_value("context_length"))

    @property
    def embedding_length(self) -> int | None:
        return _int_or_none(self.arch_value("embedding_length"))

    @property
    def block_count(self) -> int | None:
        return _int_or_none(self.arch_value("block_count"))

    @property
    def head_count(self) -> int | None:
        return _max_or_none(self.arch_value("attention.head_count"))

    @property
    def head_count_kv(self) -> int | None:
        value = _max_or_none(self.arch_value("attention.head_count_kv"))
        return value if value is not None else self.head_count

    @property
    def key_length(self) -> int | None:
        value = _int_or_none(self.arch_value("attention.key_length"))
        if value is None and self.embedding_length and self.head_count:
            return self.embedding_length // self.head_count
        return value

    @property
    def value_length(self) -> int | None:
        value = _int_or_none(self.arch_value("attention.value_length"))
        return value if value is not None else self.key_length

    @property
    def vocab_size(self) -> int | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list):
            return len(tokens)
        return _int_or_none(self.arch_value("vocab_size"))

    @property
    def pooling_type(self) -> int | None:
        return _int_or_none(self.arch_value("pooling_type"))

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def capabilities(self) -> list[str]:
        """Ollama's capability names this model has (model/capabilities in Ollama, best effort)."""
        caps = ["embedding" if self.pooling_type is not None else "completion"]
        if self.arch_value("vision.block_count") is not None or any(
            key.startswith("clip.") for key in self.metadata
        ):
            caps.append("vision")
        caps.extend(chat_template_capabilities(self.chat_template))
        return caps

    def kv_cache_bytes(self, n_ctx_total: int, kv_type: str = "f16") -> int:
        """K and V for every layer and every context cell (full attention assumed on all layers)."""
        per_element = KV_BYTES_PER_ELEMENT.get(kv_type.lower())
        if per_element is None:
            raise ValueError(f"unknown KV cache type {kv_type!r}")
        layers = self.block_count or 0
        heads_kv = self.head_count_kv or 0
        k_dim = (self.key_length or 0) * heads_kv
        v_dim = (self.value_length or 0) * heads_kv
        return math.ceil(layers * n_ctx_total * (k_dim + v_dim) * per_element)

    def compute_bytes(self, n_ctx_total: int, n_seq: int, n_batch: int = 512) -> int:
        """Output and scratch buffers llama.cpp reserves for a context, estimated from its graph.

        - output buffer: one float logits row per sequence (`4 x n_vocab x n_seq`);
        - activations of one ubatch: about four live `n_batch x max(n_embd, n_ff)` float tensors;
        - attention masks: `n_batch x n_ctx_per_sequence` f16, one for full and one for
          sliding-window layers (the KV cache keeps one stream per sequence).
        Flash attention (llama.cpp's automatic choice on CPU) never materialises the scores; with
        it off add `4 x n_batch x n_ctx_per_sequence x n_head`. Checked against llama.cpp's
        output and compute buffer sizes for gemma3 270M (n_batch 512): 21.0 MiB estimated vs
        22.8 MiB reported at 2048 cells, 33.0 vs 34.8 MiB at 8192 (within 10%).
        """
        n_seq = max(n_seq, 1)
        n_vocab = self.vocab_size or 0
        n_embd = self.embedding_length or 0
        n_ff = _max_or_none(self.arch_value("feed_forward_length")) or 4 * n_embd
        per_seq = -(-n_ctx_total // n_seq)
        outputs = 4 * n_vocab * n_seq
        activations = 4 * n_batch * max(n_embd, n_ff) * 4
        masks = 2 * n_batch * per_seq * 2
        return outputs + activations + masks

    def estimate_memory(
        self, num_ctx: int, n_seq: int, n_batch: int = 512, kv_type: str = "f16"
    ) -> int:
        """Bytes needed to serve `n_seq` sequences of `num_ctx` tokens each (Ollama §4.8 rule).

        file size (weights are memory-mapped and end up resident) + KV cache for
        `min(num_ctx, n_ctx_train) x n_seq` cells + the compute buffer estimate.
        """
        per_seq = num_ctx
        if self.context_length:
            per_seq = min(num_ctx, self.context_length)
        n_ctx_total = per_seq * max(n_seq, 1)
        return (
            self.file_size
            + self.kv_cache_bytes(n_ctx_total, kv_type)
            + self.compute_bytes(n_ctx_total, n_seq, n_batch)
        )


def read_gguf_info(path: Path | str) -> GGUFInfo:
    """Parse the header of the GGUF at `path`; ValueError if it is not a GGUF file."""
    path = Path(path)
    header = read_gguf_header(path)  # ValueError for a file that is not a valid GGUF
    metadata: dict[str, Any] = header.metadata
    tensors = [(t.name, t.type_name, t.shape) for t in header.tensors]
    parameter_count = sum(t.n_elements for t in header.tensors)
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise ValueError(f"{path} has no general.architecture")
    return GGUFInfo(
        path=path,
        file_size=header.file_size,
        architecture=architecture,
        metadata=metadata,
        tensors=tensors,
        parameter_count=parameter_count,
    )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return None


def _max_or_none(value: Any) -> int | None:
    """Per-layer arrays (some architectures vary head counts by layer) reduce to their maximum."""
    if isinstance(value, list):
        numbers = [int(v) for v in value if isinstance(v, (int, float))]
        return max(numbers) if numbers else None
    return _int_or_none(value)


def chat_template_capabilities(template: str | None) -> list[str]:
    """What a Jinja chat template (`tokenizer.chat_template`) grants, read from its text: `tools`,
    `<think>` for thinking, `suffix` or `fim` for insert. The one place this rule is written."""
    template = template or ""
    caps = []
    if "tools" in template:
        caps.append("tools")
    if "<think>" in template:
        caps.append("thinking")
    lowered = template.lower()
    if "suffix" in lowered or "fim" in lowered:
        caps.append("insert")
    return caps
