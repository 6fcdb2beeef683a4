"""Go's strconv integer rules (gocompat/strconv), the one place every Go integer is read."""

from __future__ import annotations

import pytest

from appliance.gocompat.strconv import parse_int, parse_int_clamped, parse_uint


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("+7", 7), ("-7", -7), ("007", 7), (str((1 << 63) - 1), (1 << 63) - 1),
     (str(-(1 << 63)), -(1 << 63)), (str(1 << 63), None), ("1_000", None), (" 1", None),
     ("1.0", None), ("", None), ("\u0663", None), ("0x10", None)],
)  # fmt: skip
def test_parse_int_takes_what_go_parseint_takes(text: str, value: int | None) -> None:
    assert parse_int(text) == value


def test_parse_int_checks_the_bit_size() -> None:
    assert [parse_int("2147483647", 32), parse_int("2147483648", 32)] == [2147483647, None]


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("18446744073709551615", (1 << 64) - 1), ("18446744073709551616", None),
     ("+1", None), ("-1", None), ("1_0", None)],
)  # fmt: skip
def test_parse_uint_takes_what_go_parseuint_takes(text: str, value: int | None) -> None:
    assert parse_uint(text) == value


def test_parse_int_clamped_gives_go_s_bound_out_of_range_and_none_for_bad_syntax() -> None:
    assert [parse_int_clamped("9" * 30), parse_int_clamped("-" + "9" * 30)] == [
        (1 << 63) - 1,
        -(1 << 63),
    ]
    assert parse_int_clamped("nine") is None


def test_a_five_thousand_digit_integer_is_out_of_range_not_a_crash() -> None:
    huge = "9" * 5000
    assert parse_int(huge) is None
    assert parse_uint(huge) is None
    assert parse_int_clamped(huge) == (1 << 63) - 1
    assert parse_int_clamped("-" + huge) == -(1 << 63)
    assert parse_int("0" * 5000 + "7") == 7  # leading zeros are not significant, as in Go


def test_a_five_thousand_digit_setting_warns_and_keeps_the_default() -> None:
    from appliance.settings.config import Settings, load_settings

    settings = load_settings({"LLM_APPLIANCE_CACHE_RAM": "9" * 5000})
    assert settings.cache_ram == Settings().cache_ram
    assert any("LLM_APPLIANCE_CACHE_RAM" in w for w in settings.warnings)
