"""Options: Ollama's defaults, precedence, typing (Options.FromMap), Modelfile PARAMETER typing
(api.FormatParams) and the load-time comparison of the scheduler's needsReload.

Conventions: pure functions, no I/O; messages are compared word for word with Ollama's
(api/types.go, server/routes_options_test.go, server/sched_test.go TestSchedNeedsReload*).
"""

from __future__ import annotations

import logging

import pytest

from appliance.errors import ApplianceError, BadRequest
from appliance.options import (
    LoadKey,
    Options,
    format_params,
    needs_reload,
    parse_modelfile_parameter,
    resolve_options,
)


def test_defaults_are_ollamas() -> None:
    opts = resolve_options(None, None, default_num_ctx=4096)
    assert (opts.num_ctx, opts.num_batch, opts.num_gpu, opts.main_gpu) == (4096, 512, -1, 0)
    assert (opts.use_mmap, opts.num_thread) == (None, 0)
    assert (opts.num_keep, opts.seed, opts.num_predict, opts.top_k) == (4, -1, -1, 40)
    assert (opts.top_p, opts.min_p, opts.typical_p) == (0.9, 0.0, 1.0)
    assert (opts.repeat_last_n, opts.temperature, opts.repeat_penalty) == (64, 0.8, 1.0)
    assert (opts.presence_penalty, opts.frequency_penalty, opts.stop) == (0.0, 0.0, ())


def test_request_options_override_model_params_which_override_defaults() -> None:
    opts = resolve_options(
        {"temperature": 0.5, "top_k": 10, "stop": ["<|eot|>"]},
        {"temperature": 0.1},
        default_num_ctx=2048,
    )
    assert opts.temperature == 0.1
    assert opts.top_k == 10
    assert opts.stop == ("<|eot|>",)
    assert opts.num_ctx == 2048


def test_model_num_ctx_overrides_server_default() -> None:
    assert resolve_options({"num_ctx": 8192}, None, default_num_ctx=4096).num_ctx == 8192
    assert (
        resolve_options({"num_ctx": 8192}, {"num_ctx": 1024}, default_num_ctx=4096).num_ctx == 1024
    )


def test_json_numbers_are_truncated_for_integer_options() -> None:
    opts = resolve_options(None, {"num_predict": 12.9, "seed": -3.7}, default_num_ctx=4096)
    assert opts.num_predict == 12
    assert opts.seed == -3


def test_integers_are_accepted_for_float_options() -> None:
    assert resolve_options(None, {"temperature": 1}, default_num_ctx=4096).temperature == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_ctx": "big"}, 'option "num_ctx" must be of type integer'),
        ({"top_k": True}, 'option "top_k" must be of type integer'),
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": 5}, 'option "stop" must be of type array'),
        ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
    ],
)
def test_wrong_option_type_is_500_with_go_message(options: dict, message: str) -> None:
    with pytest.raises(ApplianceError) as info:
        resolve_options(None, options, default_num_ctx=4096)
    assert info.value.status == 500
    assert info.value.message == message


def test_wrong_type_in_model_params_also_fails() -> None:
    with pytest.raises(ApplianceError, match='option "seed" must be of type integer'):
        resolve_options({"seed": "x"}, None, default_num_ctx=4096)


def test_unknown_options_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    warned: set[str] = set()  # the server's, as in a fresh process
    with caplog.at_level(logging.WARNING, logger="appliance.options"):
        opts = resolve_options(
            None, {"mirostat": 2, "bogus": True}, default_num_ctx=4096, warned=warned
        )
        resolve_options(None, {"mirostat": 2, "bogus": True}, default_num_ctx=4096, warned=warned)
    assert opts == Options(num_ctx=4096)
    assert caplog.text.count("mirostat") == 1  # removed by Ollama: once per process
    assert caplog.text.count("bogus") == 2  # unknown: every time, as Ollama logs it


def test_null_option_values_are_skipped() -> None:
    opts = resolve_options({"top_k": 5}, {"top_k": None}, default_num_ctx=4096)
    assert opts.top_k == 5
    assert "top_k" in opts.explicit


def test_stop_accepts_a_single_string() -> None:
    assert resolve_options(None, {"stop": "\n"}, default_num_ctx=4096).stop == ("\n",)


def test_options_that_are_not_an_object_are_400() -> None:
    with pytest.raises(BadRequest):
        resolve_options(None, ["temperature"], default_num_ctx=4096)  # type: ignore[arg-type]


# --- needsReload (TestSchedNeedsReload*) ---------------------------------------------------------


def _key(model: dict | None = None, request: dict | None = None, num_ctx: int = 4096) -> LoadKey:
    return resolve_options(model, request, default_num_ctx=num_ctx).load_key()


def test_sampling_options_never_force_a_reload() -> None:
    loaded = _key()
    assert not needs_reload(loaded, _key(request={"temperature": 0.1, "top_k": 3, "stop": ["x"]}))


def test_different_num_ctx_forces_a_reload() -> None:
    assert needs_reload(_key(), _key(request={"num_ctx": 8192}))


def test_negative_num_gpu_matches_any_loaded_value() -> None:
    loaded = _key(request={"num_gpu": 10})
    assert not needs_reload(loaded, _key(request={"num_gpu": -1}))
    assert needs_reload(loaded, _key(request={"num_gpu": 5}))


def test_two_automatic_num_ctx_compare_equal_even_if_values_differ() -> None:
    assert not needs_reload(_key(num_ctx=2048), _key(num_ctx=4096))
    assert needs_reload(_key(request={"num_ctx": 2048}), _key(request={"num_ctx": 4096}))


def test_a_larger_loaded_num_ctx_serves_a_smaller_request() -> None:
    assert not needs_reload(_key(request={"num_ctx": 8192}), _key())
    assert not needs_reload(_key(request={"num_ctx": 8192}), _key(request={"num_ctx": 2048}))
    assert needs_reload(_key(), _key(request={"num_ctx": 8192}))


def test_unset_use_mmap_inherits_the_loaded_choice() -> None:
    loaded = _key(request={"use_mmap": False})
    assert not needs_reload(loaded, _key())
    assert needs_reload(loaded, _key(request={"use_mmap": True}))


def test_num_ctx_is_clamped_to_train_context_before_comparing() -> None:
    loaded = resolve_options(None, {"num_ctx": 512}, default_num_ctx=4096).load_key(n_ctx_train=512)
    wanted = resolve_options(None, {"num_ctx": 8192}, default_num_ctx=4096).load_key(
        n_ctx_train=512
    )
    assert not needs_reload(loaded, wanted)


def test_num_thread_and_main_gpu_changes_force_a_reload() -> None:
    assert needs_reload(_key(), _key(request={"num_thread": 2}))
    assert needs_reload(_key(), _key(request={"main_gpu": 1}))


# --- Modelfile PARAMETER (api.FormatParams) ------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("temperature", "0.7", 0.7),
        ("top_k", "40", 40),
        ("seed", "-1", -1),
        ("use_mmap", "true", True),
        ("use_mmap", "F", False),
        ("stop", "<|eot_id|>", ["<|eot_id|>"]),
        ("num_ctx", "+8192", 8192),
    ],
)
def test_modelfile_parameters_are_typed(key: str, text: str, value: object) -> None:
    assert parse_modelfile_parameter(key, text) == value


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("bogus", "1", "unknown parameter 'bogus'"),
        ("top_k", "1.5", "invalid int value [1.5]"),
        ("top_k", "ten", "invalid int value [ten]"),
        ("temperature", "warm", "invalid float value [warm]"),
        ("temperature", "1e39", "invalid float value [1e39]"),
        ("use_mmap", "yes", "invalid bool value [yes]"),
    ],
)
def test_bad_modelfile_parameters_fail_with_ollamas_message(
    key: str, text: str, message: str
) -> None:
    with pytest.raises(BadRequest) as info:
        parse_modelfile_parameter(key, text)
    assert info.value.message == message


def test_deprecated_modelfile_parameters_only_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="appliance.options"):
        assert parse_modelfile_parameter("mirostat", "2") is None
    assert "deprecated" in caplog.text


def test_repeated_stop_lines_accumulate_and_other_keys_take_the_last() -> None:
    params = format_params(
        [
            ("stop", "a"),
            ("temperature", "0.5"),
            ("stop", "b"),
            ("temperature", "0.2"),
            ("f16_kv", "1"),
        ]
    )
    assert params == {"stop": ["a", "b"], "temperature": 0.2}


def test_modelfile_params_feed_resolve_options() -> None:
    params = format_params([("stop", "a"), ("num_ctx", "1024")])
    opts = resolve_options(params, None, default_num_ctx=4096)
    assert opts.stop == ("a",) and opts.num_ctx == 1024
