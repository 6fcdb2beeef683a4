"""Tiny llama-architecture GGUF models generated on the fly for fast, real engine tests.

The vocabulary is SentencePiece-style ("llama" tokenizer model): `<unk>`, `<s>`, `</s>`, the 256
`<0xNN>` byte tokens (so any UTF-8 text tokenizes, by byte fallback), then printable characters,
the word-boundary marker "▁" and a few scored multi-character pieces. Weights are small random
numbers from a fixed seed, so a given set of knobs always gives the same file and the same greedy
output. llama.cpp loads such a model and decodes a token in well under a millisecond.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, PoolingType, TokenType

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DEFAULT = DEFAULT_CHAT_TEMPLATE  # the name the interface notes use for the default template

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPACE = "\u2581"
_WORDS = (
    "th",
    "he",
    "in",
    "er",
    "an",
    "re",
    "on",
    "the",
    "and",
    "ing",
    "is",
    "it",
    "to",
    "of",
    SPACE + "t",
    SPACE + "a",
    SPACE + "th",
    SPACE + "the",
    SPACE + "i",
    SPACE + "is",
    "<|",
    "|>",
    "<|u",
    "<|us",
    "<|use",
    "<|user",
    "<|user|>",
    "<|a",
    "<|as",
    "<|ass",
    "<|assistant|>",
)


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """Return (tokens, scores, token types) of the tiny SPM vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    scores = [0.0, 0.0, 0.0]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(TokenType.BYTE)
        scores.append(0.0)
    singles = [c for c in string.printable if c not in " \t\n\r\x0b\x0c"] + [SPACE]
    for ch in singles:
        tokens.append(ch)
        types.append(TokenType.NORMAL)
        scores.append(-100.0)
    seen = set(tokens)
    for rank, word in enumerate(w for w in _WORDS if w not in seen):
        tokens.append(word)
        types.append(TokenType.NORMAL)
        scores.append(-10.0 + rank * 0.1 + len(word))  # longer pieces win merges
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: Path | str,
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 512,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    pooling: int | None = None,
    extra_bytes: int = 0,
    f16: bool = False,
    name: str = "tiny",
) -> Path:
    """Write a loadable llama-architecture GGUF to `path` and return the path.

    `pooling` (a `gguf.PoolingType` value) makes an embedding model; `extra_bytes` pads the file
    (a metadata string llama.cpp ignores) so tests can make models of chosen sizes.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    dtype = np.float16 if f16 else np.float32

    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if f16 else LlamaFileType.ALL_F32)
    if pooling is not None:
        writer.add_pooling_type(PoolingType(pooling))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if extra_bytes > 0:
        writer.add_string("tiny.padding", " " * extra_bytes)

    def weight(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def norm(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)  # 1-d tensors stay F32, as llama.cpp expects

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd, scale=1.0))
    writer.add_tensor("output_norm.weight", norm(n_embd))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd, scale=0.3))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm(n_embd))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_head * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_head * head_dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm(n_embd))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
