"""Duration parsing and printing, pinned to Go's time package and Ollama's keep_alive rules.

Conventions: pure functions, no I/O; each case table cites the Ollama or Go test it restates
(envconfig TestKeepAlive, api TestKeepAliveParsingFromJSON / TestDurationMarshalUnmarshal,
Go's time TestParseDuration / TestDurationString). FOREVER is math.inf.
"""

from __future__ import annotations

import pytest

from appliance.errors import BadRequest
from appliance.gocompat.durations import (
    FOREVER,
    DurationError,
    format_go_duration,
    parse_env_duration,
    parse_go_duration,
    parse_keep_alive,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("5s", 5),
        ("30s", 30),
        ("1478s", 1478),
        ("-5s", -5),
        ("+5s", 5),
        ("-0", 0),
        ("+0", 0),
        ("5.0s", 5),
        ("5.6s", 5.6),
        ("5.s", 5),
        (".5s", 0.5),
        ("1.0s", 1),
        ("1.00s", 1),
        ("1.004s", 1.004),
        ("100.00100s", 100.001),
        ("10ns", 10e-9),
        ("11us", 11e-6),
        ("12\u00b5s", 12e-6),
        ("12\u03bcs", 12e-6),
        ("13ms", 13e-3),
        ("14s", 14),
        ("15m", 900),
        ("16h", 16 * 3600),
        ("3h30m", 3.5 * 3600),
        ("10.5s4m", 250.5),
        ("-2m3.4s", -123.4),
        ("1h2m3s4ms5us6ns", 3723.004005006),
        ("39h9m14.425s", 140954.425),
        ("1.5h", 5400),
    ],
)
def test_go_duration_parses_like_time_ParseDuration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("3", 'time: missing unit in duration "3"'),
        ("60", 'time: missing unit in duration "60"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("1w", 'time: unknown unit "w" in duration "1w"'),
        ("-", 'time: invalid duration "-"'),
        ("s", 'time: invalid duration "s"'),
        (".", 'time: invalid duration "."'),
        ("-.", 'time: invalid duration "-."'),
        (".s", 'time: invalid duration ".s"'),
        ("+.s", 'time: invalid duration "+.s"'),
        ("1ms ", 'time: unknown unit "ms " in duration "1ms "'),
        ("3000000h", 'time: invalid duration "3000000h"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("\x85\x85", 'time: invalid duration "\\xc2\\x85\\xc2\\x85"'),
    ],
)
def test_go_duration_errors_carry_go_messages(text: str, message: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


def test_go_duration_accepts_min_int64_nanoseconds() -> None:
    assert parse_go_duration("-9223372036854775808ns") == -9223372036854775808 / 1e9


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (42, 42),
        (42.5, 42.5),
        (0, 0),
        (-1, FOREVER),
        (-3.14, FOREVER),
        ("42m", 42 * 60),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1.5h", 5400),
        ("0", 0),
        ("0s", 0),
        ("-1m", FOREVER),
        ("-5s", FOREVER),
        (1e300, FOREVER),
    ],
)
def test_keep_alive_json_values_follow_ollama(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("60", 'time: missing unit in duration "60"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("", 'time: invalid duration ""'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        (True, "Unsupported type: 'bool'"),
        (False, "Unsupported type: 'bool'"),
        ({"a": 1}, "Unsupported type: 'map[string]interface {}'"),
        ([1], "Unsupported type: '[]interface {}'"),
    ],
)
def test_keep_alive_json_errors_are_400_with_go_messages(value: object, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_keep_alive(value)
    assert info.value.status == 400
    assert info.value.message == message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("", 300),
        ("1s", 1),
        ("1m", 60),
        ("1h", 3600),
        ("5m0s", 300),
        ("1h2m3s", 3723),
        ("60", 60),
        ("600", 600),
        ("3600", 3600),
        ("86400", 86400),
        ("0", 0),
        ("-0", 0),
        ("-1", FOREVER),
        ("-1m", FOREVER),
        ("1d", 300),
        ("1w", 300),
        ("???", 300),
        ("1.5", 300),
    ],
)
def test_env_duration_matches_TestKeepAlive(text: str, seconds: float) -> None:
    assert parse_env_duration(text, 300) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1e-9, "1ns"),
        (1.1e-6, "1.1\u00b5s"),
        (2.2e-3, "2.2ms"),
        (3.3, "3.3s"),
        (300, "5m0s"),
        (3600, "1h0m0s"),
        (4 * 60 + 5.001, "4m5.001s"),
        (5 * 3600 + 6 * 60 + 7.001, "5h6m7.001s"),
        (8 * 60 + 1e-9, "8m0.000000001s"),
        (-1.5, "-1.5s"),
        (FOREVER, "2562047h47m16.854775807s"),
    ],
)
def test_format_go_duration_matches_Duration_String(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


def test_format_and_parse_round_trip() -> None:
    for text in ["5m0s", "1h30m0s", "1.5s", "250ms"]:
        assert format_go_duration(parse_go_duration(text)) == text
