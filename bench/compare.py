"""The appliance against llama-server, as clients see them: streams' tok/s and a chat's next turn.

Throughput: N clients stream the same raw prompt at once, greedy, a fixed token budget; the
aggregate is the generated tokens over the wall time from the first request to the last token
(the appliance through /api/generate, llama-server through /completion).

Follow-up turn: a chat client resends the whole conversation every turn. A ~1,200-word
conversation is sent once (its answer generated), then again with that answer and a new question
appended; the figure is the follow-up's time to its first streamed token. The appliance gets it
through /api/chat; llama-server as Ollama drives it: the prompt rendered by the server's own
template (/apply-template, not timed), then /completion with `cache_prompt: true`.
"""

from __future__ import annotations

import json
import time

import httpx
import trio

from bench.http import concurrent_streams
from bench.inprocess import PROMPT

FOLLOW_UP_TOKENS = 16
FIRST_TURN_TOKENS = 32

_FACTS = (
    "The lighthouse stands on a granite point where two currents meet and the fog comes in fast.",
    "Its lamp was converted from paraffin to electricity in 1921 and automated in 1987.",
    "The keeper logged the weather every four hours, the ships that passed and the sea state.",
    "Supplies came by boat once a fortnight, when the swell allowed a landing at the north steps.",
    "In winter the keeper painted the railings, cleaned the lens and repaired the fog signal.",
    "The island has no trees, a walled garden for potatoes and a cistern that collects rain water.",
    "Seals haul out on the southern rocks in autumn and puffins nest in the turf in early summer.",
    "A storm in 1953 broke the lantern glass and the keeper kept a hand lamp burning all night.",
)


def conversation(round_no: int, words: int = 1200) -> list[dict[str, str]]:
    """A chat history of about `words` words ending with a user question; distinct per round so
    that no earlier round's cache helps its first turn."""
    messages = [
        {
            "role": "system",
            "content": f"Session {round_no}. You are a concise assistant who knows the lighthouse.",
        }
    ]
    count, turn = 0, 0
    while count < words:
        question = f"Tell me more about the lighthouse, part {turn + 1} (session {round_no})."
        answer = " ".join(_FACTS[(turn + i) % len(_FACTS)] for i in range(5))
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        count += len(question.split()) + len(answer.split())
        turn += 1
    messages.append({"role": "user", "content": "What happened to the lantern glass, and when?"})
    return messages


FOLLOW_UP = {"role": "user", "content": "Thank you. Now say in one sentence how supplies came."}


# --- the appliance (Ollama API) -----------------------------------------------------------------


async def _appliance_chat(
    client: httpx.AsyncClient, model: str, messages: list[dict[str, str]], n_tokens: int
) -> tuple[float, str, int]:
    """(seconds to the first token, the answer, prompt tokens evaluated) of a streamed /api/chat."""
    body = {
        "model": model,
        "messages": messages,
        "stream": True,
        "options": {"temperature": 0, "num_predict": n_tokens},
    }
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    evaluated = 0
    async with client.stream("POST", "/api/chat", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line:
                continue
            chunk = json.loads(line)
            text = chunk.get("message", {}).get("content", "")
            if first is None and (text or chunk.get("done")):
                first = time.perf_counter() - started
            parts.append(text)
            if chunk.get("done"):
                evaluated = int(chunk.get("prompt_eval_count") or 0)
    return float(first or 0.0), "".join(parts), evaluated


async def _appliance_follow_up(url: str, model: str, round_no: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        messages = conversation(round_no)
        cold, answer, _ = await _appliance_chat(client, model, messages, FIRST_TURN_TOKENS)
        messages = [*messages, {"role": "assistant", "content": answer}, FOLLOW_UP]
        warm, _, evaluated = await _appliance_chat(client, model, messages, FOLLOW_UP_TOKENS)
    return {"first_turn_ttft_s": cold, "follow_up_ttft_s": warm, "follow_up_prompt_eval": evaluated}


def appliance_follow_up(url: str, model: str, round_no: int) -> dict[str, float]:
    return trio.run(_appliance_follow_up, url, model, round_no)


# --- llama-server ---------------------------------------------------------------------------------


async def _peer_completion(
    client: httpx.AsyncClient, prompt: str, n_tokens: int
) -> tuple[float, str, int, int]:
    """(seconds to the first token, the text, tokens generated, prompt tokens evaluated) of one
    streamed /completion."""
    body = {
        "prompt": prompt,
        "n_predict": n_tokens,
        "temperature": 0,
        "stream": True,
        "cache_prompt": True,
    }
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    predicted = evaluated = 0
    async with client.stream("POST", "/completion", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data.strip() == "[DONE]":
                break
            chunk = json.loads(data)
            if first is None:
                first = time.perf_counter() - started
            parts.append(chunk.get("content", ""))
            if chunk.get("stop"):
                predicted = int(chunk.get("tokens_predicted") or 0)
                evaluated = int((chunk.get("timings") or {}).get("prompt_n") or 0)
    return float(first or 0.0), "".join(parts), predicted, evaluated


async def _peer_template(client: httpx.AsyncClient, messages: list[dict[str, str]]) -> str:
    response = await client.post("/apply-template", json={"messages": messages})
    response.raise_for_status()
    return response.json()["prompt"]


def _peer_client(url: str) -> httpx.AsyncClient:
    """A fresh connection per request: llama-server may close a connection after a streamed
    answer without saying so, and a reused one then fails ("Server disconnected")."""
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=url, timeout=600, limits=limits)


async def _peer_follow_up(url: str, round_no: int) -> dict[str, float]:
    async with _peer_client(url) as client:
        messages = conversation(round_no)
        prompt = await _peer_template(client, messages)
        cold, answer, _, _ = await _peer_completion(client, prompt, FIRST_TURN_TOKENS)
        messages = [*messages, {"role": "assistant", "content": answer}, FOLLOW_UP]
        prompt = await _peer_template(client, messages)
        warm, _, _, evaluated = await _peer_completion(client, prompt, FOLLOW_UP_TOKENS)
    return {"first_turn_ttft_s": cold, "follow_up_ttft_s": warm, "follow_up_prompt_eval": evaluated}


def peer_follow_up(url: str, round_no: int) -> dict[str, float]:
    return trio.run(_peer_follow_up, url, round_no)


async def _peer_streams(url: str, n_streams: int, n_tokens: int) -> dict[str, float]:
    async with _peer_client(url) as client:
        await _peer_completion(client, f"{PROMPT} (-1)", 4)  # warm up, as the appliance's run

        async def stream(i: int) -> int:
            return (await _peer_completion(client, f"{PROMPT} ({i})", n_tokens))[2]

        return await concurrent_streams(stream, n_streams)


def peer_streams(url: str, n_streams: int, n_tokens: int) -> dict[str, float]:
    return trio.run(_peer_streams, url, n_streams, n_tokens)
