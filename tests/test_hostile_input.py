"""Hostile request bodies get a clear 400 and the server keeps serving (issue 8, item 7).

Each test sends one kind of hostile value to the real server (the `server` fixture, loopback)
as raw bytes, checks the answer, and then checks that an ordinary generate still works.
"""

from __future__ import annotations

import json
from typing import Any

LONG_HOST = "h" * 300
BIG_NUMBER = "9" * 5000


async def _post(server: Any, path: str, body: str | bytes, method: str = "POST") -> Any:
    content = body.encode() if isinstance(body, str) else body
    async with server.client() as client:
        return await client.request(method, path, content=content)


async def _assert_still_serving(server: Any) -> None:
    async with server.client() as client:
        r = await client.post(
            "/api/generate",
            json={"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        )
    assert r.status_code == 200, r.text


async def test_nesting_100000_deep_is_400_exceeded_max_depth(server) -> None:
    r = await _post(server, "/api/generate", "[" * 100_000 + "]" * 100_000)
    assert (r.status_code, r.json()) == (400, {"error": "exceeded max depth"})
    await _assert_still_serving(server)


async def test_nesting_deeper_than_the_limit_inside_an_object_is_400(server) -> None:
    deep = "[" * 500 + "]" * 500
    r = await _post(server, "/api/generate", f'{{"model": "tiny", "format": {deep}}}')
    assert (r.status_code, r.json()) == (400, {"error": "exceeded max depth"})
    await _assert_still_serving(server)


async def test_a_5000_digit_integer_is_400_naming_the_number(server) -> None:
    r = await _post(
        server, "/api/generate", f'{{"model": "tiny", "options": {{"seed": {BIG_NUMBER}}}}}'
    )
    assert r.status_code == 400
    assert r.json()["error"].startswith("json: cannot unmarshal number 99999")
    await _assert_still_serving(server)


async def test_nan_literal_is_400_with_go_text(server) -> None:
    r = await _post(server, "/api/generate", '{"model": "tiny", "options": {"temperature": NaN}}')
    assert (r.status_code, r.json()) == (
        400,
        {"error": "invalid character 'N' looking for beginning of value"},
    )
    await _assert_still_serving(server)


async def test_infinity_literal_is_400_with_go_text(server) -> None:
    r = await _post(server, "/api/chat", '{"model": "tiny", "options": {"top_p": Infinity}}')
    assert (r.status_code, r.json()) == (
        400,
        {"error": "invalid character 'I' looking for beginning of value"},
    )
    await _assert_still_serving(server)


async def test_hostile_json_on_v1_is_400_in_openai_shape(server) -> None:
    r = await _post(server, "/v1/chat/completions", '{"model": "tiny", "temperature": NaN}')
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"] == "invalid character 'N' looking for beginning of value"
    assert error["type"] == "invalid_request_error"
    await _assert_still_serving(server)


async def test_a_lone_surrogate_in_a_show_name_is_400_invalid_model_name(server) -> None:
    r = await _post(server, "/api/show", '{"model": "\\ud800"}')
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
    await _assert_still_serving(server)


async def test_lone_surrogates_in_create_fields_become_replacement_characters_as_in_go(
    server,
) -> None:
    body = (
        '{"model": "odd", "from": "tiny", "stream": false, "system": "a\\ud800b",'
        ' "license": "\\udfff", "parameters": {"stop": ["x\\ud800"]}}'
    )
    r = await _post(server, "/api/create", body)
    assert r.status_code == 200, r.text
    async with server.client() as client:
        shown = (await client.post("/api/show", json={"model": "odd"})).json()
        answer = await client.post(
            "/api/generate",
            json={"model": "odd", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        )
    assert shown["system"] == "a\ufffdb"
    assert shown["license"] == "\ufffd"
    assert answer.status_code == 200, answer.text


async def test_a_host_too_long_for_a_file_name_is_400_on_every_name_route(server) -> None:
    name = f"{LONG_HOST}/ns/m"
    requests = [
        ("POST", "/api/show", {"model": name}),
        ("POST", "/api/generate", {"model": name, "prompt": "x"}),
        ("POST", "/api/create", {"model": name, "from": "tiny", "stream": False}),
        ("POST", "/api/copy", {"source": "tiny", "destination": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/pull", {"model": name, "stream": False}),
        ("POST", "/api/push", {"model": name, "stream": False}),
    ]
    for method, path, body in requests:
        r = await _post(server, path, json.dumps(body), method=method)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert r.json()["error"].startswith("invalid model name"), (path, r.text)
    await _assert_still_serving(server)


async def test_a_pull_from_an_impossible_registry_host_is_400(server) -> None:
    for name in (f"{'h' * 64}.example/ns/m", "localhost:99999/ns/m"):
        r = await _post(server, "/api/pull", json.dumps({"model": name, "stream": False}))
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"].startswith("invalid model name"), r.text
    await _assert_still_serving(server)


async def test_create_with_a_badly_typed_parameter_is_400_and_creates_nothing(server) -> None:
    body = {"model": "broken", "from": "tiny", "parameters": {"num_ctx": "abc"}, "stream": False}
    r = await _post(server, "/api/create", json.dumps(body))
    assert (r.status_code, r.json()) == (
        400,
        {"error": 'option "num_ctx" must be of type integer'},
    )
    async with server.client() as client:
        names = [m["name"] for m in (await client.get("/api/tags")).json()["models"]]
    assert "broken:latest" not in names
    await _assert_still_serving(server)


async def test_images_that_are_not_base64_are_400_with_go_offset(server) -> None:
    generate = {"model": "tiny", "prompt": "x", "images": ["QUJD", "QUJD!!"]}
    chat = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "x", "images": ["QQ"]}],
    }
    r = await _post(server, "/api/generate", json.dumps(generate))
    assert (r.status_code, r.json()) == (400, {"error": "illegal base64 data at input byte 4"})
    r = await _post(server, "/api/chat", json.dumps(chat))
    assert (r.status_code, r.json()) == (400, {"error": "illegal base64 data at input byte 0"})
    await _assert_still_serving(server)


async def test_a_client_template_that_does_not_parse_is_400(server) -> None:
    body = {"model": "tiny", "prompt": "x", "template": "{{ .Prompt", "stream": False}
    r = await _post(server, "/api/generate", json.dumps(body))
    assert r.status_code == 400
    assert r.json()["error"].startswith("template error:")
    await _assert_still_serving(server)


async def test_tool_call_arguments_with_a_huge_number_are_400_on_v1(server) -> None:
    arguments = json.dumps(f'{{"n": {BIG_NUMBER}}}')
    body = (
        '{"model": "tiny", "max_tokens": 2, "messages": [{"role": "assistant", "content": null,'
        f' "tool_calls": [{{"function": {{"name": "f", "arguments": {arguments}}}}}]}}]}}'
    )
    r = await _post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == "invalid tool call arguments"
    await _assert_still_serving(server)


async def test_ten_thousand_stop_sequences_are_400_before_any_generation(server) -> None:
    stops = [f"{i:04d}" + "ab" * 500 for i in range(10_000)]
    body = {"model": "tiny", "prompt": "x", "options": {"stop": stops}}
    r = await _post(server, "/api/generate", json.dumps(body))
    assert (r.status_code, r.json()) == (
        400,
        {"error": "too many stop sequences: 10000 (at most 64)"},
    )
    await _assert_still_serving(server)


async def test_a_format_schema_asking_for_a_huge_repetition_is_400(server) -> None:
    formats = [
        {"type": "array", "minItems": 100_000_000, "items": {"type": "string"}},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a{1000}){1000}$"}}},
    ]
    for schema in formats:
        body = {"model": "tiny", "prompt": "x", "format": schema, "stream": False}
        r = await _post(server, "/api/generate", json.dumps(body))
        assert r.status_code == 400, r.text
        assert "repetitions" in r.json()["error"]
    await _assert_still_serving(server)


async def test_an_ordinary_bounded_format_schema_still_works(server) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 280, "pattern": "^[A-Z][a-z]{1,40}$"}
        },
        "required": ["city"],
    }
    body = {
        "model": "tiny",
        "prompt": "x",
        "format": schema,
        "stream": False,
        "options": {"num_predict": 4},
    }
    r = await _post(server, "/api/generate", json.dumps(body))
    assert r.status_code == 200, r.text


async def test_a_client_template_that_never_ends_is_400(server) -> None:
    body = {"model": "tiny", "prompt": "x", "template": "{{ range 1000000000 }}x{{ end }}"}
    r = await _post(server, "/api/generate", json.dumps({**body, "stream": False}))
    assert r.status_code == 400, r.text
    assert "more than 2000000 steps" in r.json()["error"]
    await _assert_still_serving(server)


async def test_a_printf_width_over_a_million_is_go_badwidth_not_a_gigabyte(server) -> None:
    body = {
        "model": "tiny",
        "prompt": "x",
        "raw": False,
        "template": '{{ printf "%01000000000d" 1 }} {{ .Prompt }}',
        "stream": False,
        "options": {"num_predict": 1},
    }
    r = await _post(server, "/api/generate", json.dumps(body))
    assert r.status_code == 200, r.text
    await _assert_still_serving(server)
