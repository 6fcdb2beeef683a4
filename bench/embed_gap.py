"""`python -m bench.embed_gap`: how long a stream waits between tokens while a large embedding runs.

The server runs as its own process with the reference model (OLLAMA_NUM_PARALLEL=2). First one
stream alone gives the usual gap between its tokens (the median); then a second stream runs while
one `/api/embed` of many long inputs is computed on the same model, and the longest gap between
that stream's tokens during the embedding is compared with the usual one. Embeddings computed in
one worker-thread call stall the stream for the whole embedding; in pieces interleaved with the
decode steps, the longest gap stays a small multiple of the usual one. Options: `--inputs N`,
`--words N` (per input), `--tokens N` (of the baseline stream).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
import trio

from bench.http import fresh_store, server

MODEL = "gemma3:270m"
TEXT = (
    "The appliance serves local language models to every client on the network, and each one "
    "expects its answer to arrive at a steady pace while the others ask for embeddings. "
)


async def _stream_gaps(
    client: httpx.AsyncClient, n_tokens: int, stop: trio.Event | None = None
) -> list[tuple[float, float]]:
    """(arrival time, gap since the previous token) for each token line after the first."""
    body = {
        "model": MODEL,
        "prompt": "Write a long story about a lighthouse keeper.",
        "options": {"temperature": 0, "num_predict": n_tokens},
    }
    out: list[tuple[float, float]] = []
    last: float | None = None
    async with client.stream("POST", "/api/generate", json=body) as response:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            now = time.perf_counter()
            if last is not None:
                out.append((now, now - last))
            last = now
            if json.loads(line).get("done") or (stop is not None and stop.is_set()):
                break
    return out


async def _measure(url: str, n_inputs: int, words: int, n_tokens: int) -> dict[str, float]:
    inputs = [
        f"({i}) " + " ".join((TEXT * (words // 20 + 1)).split()[:words]) for i in range(n_inputs)
    ]
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        await _stream_gaps(client, 4)  # load and warm up
        await client.post("/api/embed", json={"model": MODEL, "input": "warm up"})
        alone = [gap for _, gap in await _stream_gaps(client, n_tokens)]
        usual = statistics.median(alone)

        done = trio.Event()
        span: dict[str, float] = {}
        gaps: list[tuple[float, float]] = []
        answer: dict[str, object] = {}

        async def stream() -> None:
            gaps.extend(await _stream_gaps(client, 100_000, stop=done))

        async def embed() -> None:
            await trio.sleep(2 * usual * 5)  # let the stream get going first
            span["start"] = time.perf_counter()
            r = await client.post("/api/embed", json={"model": MODEL, "input": inputs})
            span["end"] = time.perf_counter()
            answer.update(status=r.status_code, tokens=r.json().get("prompt_eval_count", 0))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            nursery.start_soon(embed)
    # A gap belongs to the embedding when it overlaps it: a stream stalled for the whole embedding
    # shows as one gap that spans it.
    during = [gap for at, gap in gaps if at > span["start"] and at - gap < span["end"]]
    longest = max(during, default=span["end"] - span["start"])
    return {
        "inputs": n_inputs,
        "embed_status": answer["status"],
        "embed_tokens": answer["tokens"],
        "embed_s": round(span["end"] - span["start"], 3),
        "usual_gap_ms": round(usual * 1000, 2),
        "tokens_during_embed": len(during),
        "median_gap_during_ms": round(statistics.median(during) * 1000, 2) if during else None,
        "longest_gap_during_ms": round(longest * 1000, 2),
        "ratio_longest_to_usual": round(longest / usual, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=12)
    parser.add_argument("--words", type=int, default=1500)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    with server(fresh_store(), num_parallel=2) as (url, _pid):
        result = trio.run(_measure, url, args.inputs, args.words, args.tokens)
    print(json.dumps(result, indent=2))
    print(
        f"embed of {result['inputs']} inputs ({result['embed_tokens']} tokens) took "
        f"{result['embed_s']} s; longest token gap meanwhile {result['longest_gap_during_ms']} ms"
        f" = {result['ratio_longest_to_usual']} x the usual {result['usual_gap_ms']} ms"
    )


if __name__ == "__main__":
    main()
