"""The typed bodies of the model-management routes (api/bodies/models.py), parsed on their own,
and one wrong-typed body through the real server.

A wrong type is Go's decoder text naming Ollama's struct; absent and null fields take Go's zero
values; unknown fields are ignored, as Go's decoder ignores them.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from appliance.api.bodies.models import (
    CopyRequest,
    DeleteRequest,
    PullRequest,
    PushRequest,
    ShowRequest,
    parse_create,
)
from appliance.errors import BadRequest
from appliance.store.names import parse_model_name

DIGEST = "sha256:" + "a" * 64


def refusal(parse: Any, body: dict[str, Any]) -> str:
    with pytest.raises(BadRequest) as info:
        parse(body)
    assert info.value.status == 400
    return info.value.message


@pytest.mark.parametrize(
    ("parse", "body", "message"),
    [
        (
            ShowRequest.parse,
            {"model": 5},
            "json: cannot unmarshal number into Go struct field ShowRequest.model of type string",
        ),
        (
            ShowRequest.parse,
            {"model": "tiny", "verbose": "yes"},
            "json: cannot unmarshal string into Go struct field ShowRequest.verbose of type bool",
        ),
        (
            ShowRequest.parse,
            {"model": "tiny", "system": ["a"]},
            "json: cannot unmarshal array into Go struct field ShowRequest.system of type string",
        ),
        (
            CopyRequest.parse,
            {"source": "tiny", "destination": 5},
            "json: cannot unmarshal number into Go struct field CopyRequest.destination"
            " of type string",
        ),
        (
            CopyRequest.parse,
            {"source": {}, "destination": "x"},
            "json: cannot unmarshal object into Go struct field CopyRequest.source of type string",
        ),
        (
            DeleteRequest.parse,
            {"name": True},
            "json: cannot unmarshal bool into Go struct field DeleteRequest.name of type string",
        ),
        (
            PullRequest.parse,
            {"model": "tiny", "insecure": "yes"},
            "json: cannot unmarshal string into Go struct field PullRequest.insecure of type bool",
        ),
        (
            PushRequest.parse,
            {"model": "me/tiny", "stream": 0},
            "json: cannot unmarshal number into Go struct field PushRequest.stream of type bool",
        ),
    ],
)
def test_a_wrong_type_is_gos_decoder_text(parse: Any, body: dict[str, Any], message: str) -> None:
    assert refusal(parse, body) == message


def test_the_type_is_checked_before_the_name() -> None:
    # Go decodes the whole body before Ollama looks at the name.
    body = {"model": "a/b/c/d/e", "insecure": 1}
    assert refusal(PullRequest.parse, body) == (
        "json: cannot unmarshal number into Go struct field PullRequest.insecure of type bool"
    )


def test_show_takes_defaults_for_absent_and_null_fields() -> None:
    req = ShowRequest.parse({"model": "tiny", "verbose": None, "system": None})
    assert (req.model, req.verbose, req.system) == ("tiny", False, "")
    assert req.name == parse_model_name("tiny")


def test_unknown_fields_are_ignored() -> None:
    req = ShowRequest.parse({"model": "tiny", "verbose": True, "options": 5, "extra": [1]})
    assert (req.model, req.verbose) == ("tiny", True)


def test_name_stands_in_for_an_empty_model() -> None:
    assert ShowRequest.parse({"model": "", "name": "other"}).model == "other"
    assert DeleteRequest.parse({"name": "other"}).model == "other"


def test_show_without_a_model_is_model_is_required() -> None:
    assert refusal(ShowRequest.parse, {"verbose": True}) == "model is required"


def test_delete_names_the_invalid_text() -> None:
    assert refusal(DeleteRequest.parse, {"model": "a/"}) == 'name "a/" is invalid'


def test_copy_names_which_side_is_invalid() -> None:
    assert refusal(CopyRequest.parse, {"source": "tiny"}) == 'destination "" is invalid'
    req = CopyRequest.parse({"source": "Tiny", "destination": "me/copy:v2"})
    assert (req.source_text, req.destination) == ("Tiny", parse_model_name("me/copy:v2"))


def test_pull_defaults_and_spaces_around_the_name() -> None:
    req = PullRequest.parse({"model": "  ", "name": " registry.test/library/tiny "})
    assert req.name == parse_model_name("registry.test/library/tiny")
    assert (req.insecure, req.stream) == (False, True)


def test_pull_without_a_model_is_an_invalid_name_and_push_requires_one() -> None:
    assert refusal(PullRequest.parse, {}) == "invalid model name"
    assert refusal(PushRequest.parse, {"stream": False}) == "model is required"


def test_a_registry_name_gets_the_host_check_before_anything_dials() -> None:
    message = refusal(PushRequest.parse, {"model": "host:70000/ns/tiny"})
    assert message == "invalid model name: port 70000 is not between 1 and 65535"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": 1, "from": "tiny"},
            "json: cannot unmarshal number into Go struct field CreateRequest.model of type string",
        ),
        (
            {"model": "m", "from": "tiny", "stream": "no"},
            "json: cannot unmarshal string into Go struct field CreateRequest.stream of type bool",
        ),
        (
            {"model": "m", "files": ["x.gguf"]},
            "json: cannot unmarshal array into Go struct field CreateRequest.files"
            " of type map[string]string",
        ),
        (
            {"model": "m", "files": {"x.gguf": 5}},
            "json: cannot unmarshal number into Go struct field CreateRequest.files of type string",
        ),
        (
            {"model": "m", "from": "tiny", "parameters": [1]},
            "json: cannot unmarshal array into Go struct field CreateRequest.parameters"
            " of type map[string]interface {}",
        ),
        (
            {"model": "m", "from": "tiny", "messages": "hi"},
            "json: cannot unmarshal string into Go struct field CreateRequest.messages"
            " of type []api.Message",
        ),
        (
            {"model": "m", "from": "tiny", "messages": [1]},
            "json: cannot unmarshal number into Go struct field CreateRequest.messages"
            " of type api.Message",
        ),
    ],
)
def test_create_a_wrong_type_is_gos_decoder_text(body: dict[str, Any], message: str) -> None:
    assert refusal(parse_create, body) == message


def test_create_takes_defaults_and_ignores_unknown_fields() -> None:
    req = parse_create({"model": "m", "files": {"m.gguf": DIGEST}, "info": {"x": 1}})
    assert req.name == parse_model_name("m")
    assert req.files == {"m.gguf": DIGEST}
    assert (req.from_, req.template, req.license, req.parameters, req.messages) == (
        None,
        "",
        [],
        {},
        [],
    )
    assert req.stream is True


def test_create_records_whole_numbers_and_roles_as_go_would() -> None:
    req = parse_create(
        {
            "name": "m",
            "from": "tiny",
            "parameters": {"temperature": 1.0, "stop": ["x"]},
            "messages": [{"role": "User", "content": "hi", "images": None}],
            "license": ["MIT", ""],
        }
    )
    assert req.name == parse_model_name("m") and req.from_text == "tiny"
    assert req.parameters == {"temperature": 1, "stop": ["x"]}
    assert isinstance(req.parameters["temperature"], int)
    assert req.messages == [{"role": "user", "content": "hi"}]
    assert req.license == ["MIT"]


async def test_copy_with_a_number_for_destination_is_a_400_and_copies_nothing(server) -> None:
    async with server.client() as client:
        with trio.fail_after(60):
            before = (await client.get("/api/tags")).json()
            response = await client.post("/api/copy", json={"source": "tiny", "destination": 5})
            after = (await client.get("/api/tags")).json()
    assert response.status_code == 400
    assert response.json() == {
        "error": "json: cannot unmarshal number into Go struct field CopyRequest.destination"
        " of type string"
    }
    assert [m["name"] for m in after["models"]] == [m["name"] for m in before["models"]]
    assert [m["name"] for m in after["models"]] == ["tiny:latest"]
