"""A chat longer than the context on the reference model (Gemma 3's built-in chat template, which
refuses roles that do not alternate): truncation keeps whole turns, and never answers 500
(issue 8, item 5)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

pytestmark = pytest.mark.reference
LIMIT = 240


async def chat(gemma: Any, messages: list[dict[str, str]], **options: Any) -> httpx.Response:
    """One non-streamed /api/chat to the reference model."""
    body = {"model": "gemma3:270m", "messages": messages, "stream": False, "options": options}
    with trio.fail_after(LIMIT):
        async with gemma.client() as client:
            return await client.post("/api/chat", json=body)


def turns(n: int) -> list[dict[str, str]]:
    out = [{"role": "system", "content": "You answer in one word."}]
    for i in range(n):
        out.append({"role": "user", "content": f"Question {i}: what is {i} plus {i}?"})
        out.append({"role": "assistant", "content": f"The answer is {2 * i}, of course."})
    out.append({"role": "user", "content": "What colour is the sky?"})
    return out


async def test_a_chat_longer_than_the_context_keeps_the_newest_whole_turns(gemma):
    r = await chat(gemma, turns(300), num_ctx=512, num_predict=4, temperature=0)
    assert r.status_code == 200, r.text
    assert 100 < r.json()["prompt_eval_count"] <= 512


async def test_a_history_the_template_refuses_is_a_400_with_its_message(gemma):
    two_users = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    r = await chat(gemma, two_users, num_predict=1)
    assert r.status_code == 400, r.text
    assert "Conversation roles must alternate" in r.json()["error"]
