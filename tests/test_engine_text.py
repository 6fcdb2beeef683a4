"""Incremental UTF-8 decoding and stop-string matching (engine/text.py).

Pure functions, no model: each test feeds pieces the way the batch loop does and checks what
comes out, and when.
"""

from __future__ import annotations

from engine.text import StopMatcher, Utf8Stream


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


def test_utf8_stream_holds_a_character_split_across_pieces() -> None:
    stream = Utf8Stream()
    data = "né€😀".encode()
    assert stream.feed(data[:2]) == "n"  # first byte of "é" is held
    assert stream.feed(data[2:4]) == "é"  # rest of "é" and first byte of "€"
    assert stream.feed(data[4:7]) == "€"
    assert stream.feed(data[7:9]) == ""
    assert stream.feed(data[9:]) == "😀"
    assert stream.flush() == ""


def test_utf8_stream_replaces_invalid_bytes() -> None:
    stream = Utf8Stream()
    assert stream.feed(b"a\xffb") == "a\ufffdb"


def test_utf8_stream_flush_replaces_an_incomplete_tail() -> None:
    stream = Utf8Stream()
    assert stream.feed("x€".encode()[:3]) == "x"
    assert stream.flush() == "\ufffd"


def test_stop_matcher_without_stops_passes_text_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("hello") == ("hello", False)


def test_stop_matcher_emits_text_before_the_stop_only() -> None:
    assert feed_all(StopMatcher(["END"]), ["abc", "END", "more"]) == ("abc", True)


def test_stop_split_across_pieces_is_never_partly_emitted() -> None:
    matcher = StopMatcher(["<|end|>"])
    assert matcher.feed("text <|") == ("text ", False)
    assert matcher.feed("en") == ("", False)
    assert matcher.feed("d|> tail") == ("", True)
    assert matcher.matched == "<|end|>"


def test_held_text_is_released_when_the_stop_does_not_complete() -> None:
    matcher = StopMatcher(["<|end|>"])
    assert matcher.feed("a <|e") == ("a ", False)
    assert matcher.feed("x") == ("<|ex", False)


def test_held_text_is_released_by_flush_at_the_end() -> None:
    assert feed_all(StopMatcher(["STOP"]), ["go ST"]) == ("go ST", False)


def test_earliest_of_overlapping_stops_wins() -> None:
    matcher = StopMatcher(["bcd", "abcx", "cd"])
    text, stopped = feed_all(matcher, ["xab", "cd"])
    assert (text, stopped) == ("xa", True)
    assert matcher.matched == "bcd"


def test_stop_inside_one_piece_cuts_the_rest_of_the_piece() -> None:
    assert feed_all(StopMatcher(["\n\n"]), ["line one\n\nline two"]) == ("line one", True)


def test_feeding_after_a_match_emits_nothing() -> None:
    matcher = StopMatcher(["x"])
    matcher.feed("x")
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_prefix_of_a_stop_that_repeats_is_held_minimally() -> None:
    matcher = StopMatcher(["aab"])
    assert matcher.feed("aaa") == ("a", False)  # "aa" might still become "aab"
    assert matcher.feed("b") == ("", True)  # "aaab" = "a" + "aab"
