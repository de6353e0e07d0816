"""Text assembly while decoding: whole characters out, stop strings cut and never leaked."""

from __future__ import annotations

import pytest

from appliance.errors import InvalidRequest
from appliance.models.worker.decode import TextAssembler
from appliance.models.worker.sampler import parse_logit_bias


def feed_all(asm: TextAssembler, chunks: list[bytes]) -> list[str]:
    out = [asm.feed(c) for c in chunks]
    out.append(asm.finish())
    return out


def test_multibyte_characters_split_across_tokens_come_out_whole() -> None:
    euro = "€".encode()
    out = feed_all(TextAssembler(), [b"a", euro[:1], euro[1:2], euro[2:], b"b"])
    assert out == ["a", "", "", "€", "b", ""]


def test_stop_string_is_cut_and_held_back_until_known() -> None:
    asm = TextAssembler(["</end>"])
    assert asm.feed(b"hello </") == "hello "  # "</" might begin the stop string
    assert asm.feed(b"en") == ""
    assert asm.feed(b"d> more") == ""
    assert asm.stopped
    assert asm.finish() == ""


def test_false_alarm_is_released() -> None:
    asm = TextAssembler(["STOP"])
    assert asm.feed(b"ST") == ""
    assert asm.feed(b"ar") == "STar"
    assert not asm.stopped


def test_held_back_text_is_flushed_at_the_end() -> None:
    asm = TextAssembler(["\n\n"])
    assert asm.feed(b"line\n") == "line"
    assert asm.finish() == "\n"


def test_logit_bias_is_checked() -> None:
    assert parse_logit_bias({"5": -100, "7": 2.5}, 10) == {5: -100.0, 7: 2.5}
    with pytest.raises(InvalidRequest, match="token ids go from 0 to 9"):
        parse_logit_bias({"10": 1}, 10)
    with pytest.raises(InvalidRequest, match="biases from -100 to 100"):
        parse_logit_bias({"1": 500}, 10)
    with pytest.raises(InvalidRequest):
        parse_logit_bias({"x": 1}, 10)
