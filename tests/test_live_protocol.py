"""The /v1/live message set, sans-IO: client frames in, typed commands out; reply audio
and messages out as frames (docs/protocol.md)."""

from __future__ import annotations

import base64
import json

import pytest

from omni_agent.events import AudioChunk
from omni_agent.live import LiveConfig
from omni_agent.server.live_protocol import (Audio, ConfigureMessage, ConnectParams, EndTurnMessage,
                                             InterruptMessage, LiveProtocol, PingMessage, PlaybackMessage,
                                             ProtocolError, TextMessage, parse_audio_frame, parse_connect)


def refusal(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        LiveProtocol().receive_text(text)
    return e.value


@pytest.mark.parametrize("message,command", [
    ({"type": "text", "text": "hello"}, TextMessage(type="text", text="hello")),
    ({"type": "playback", "turn_id": 2, "played_ms": 850}, PlaybackMessage(type="playback", turn_id=2,
                                                                           played_ms=850, final=True)),
    ({"type": "interrupt"}, InterruptMessage(type="interrupt")),
    ({"type": "end_turn"}, EndTurnMessage(type="end_turn")),
    ({"type": "ping", "t": 12.5}, PingMessage(type="ping", t=12.5)),
    ({"type": "audio", "data": base64.b64encode(b"\x01\x00").decode()}, Audio(b"\x01\x00")),
])
def test_each_client_message_becomes_its_typed_command(message, command):
    assert LiveProtocol().receive_text(json.dumps(message)) == command


def test_configure_gives_only_the_settings_it_names():
    cmd = LiveProtocol().receive_text('{"type": "configure", "barge_in": false, "threshold": 0.4}')
    assert isinstance(cmd, ConfigureMessage) and cmd.changes() == {"barge_in": False, "threshold": 0.4}


@pytest.mark.parametrize("value", ['"false"', "0", '"maybe"'])
def test_configure_refuses_a_flag_that_is_not_a_json_boolean(value):
    err = refusal('{"type": "configure", "barge_in": %s}' % value)
    assert err.code == "bad_message" and "barge_in must be true or false" in str(err)


def test_configure_refuses_null_instead_of_keeping_the_setting_silently():
    err = refusal('{"type": "configure", "barge_in": null}')
    assert err.code == "bad_message" and "barge_in must not be null" in str(err)


@pytest.mark.parametrize("value", ["true", "250.7", "250.0", '"250"'])
def test_configure_refuses_milliseconds_that_are_not_a_json_integer(value):
    err = refusal('{"type": "configure", "end_silence_ms": %s}' % value)
    assert err.code == "bad_message" and "end_silence_ms must be an integer" in str(err)


def test_configure_refuses_a_setting_it_cannot_change_and_lists_those_it_can():
    err = refusal('{"type": "configure", "voice": "loud"}')
    assert err.code == "bad_message" and "'voice'" in str(err) and "end_silence_ms" in str(err)


@pytest.mark.parametrize("text,code,words", [
    ("not json", "bad_json", "not valid JSON"),
    ("[1, 2]", "bad_message", '"type"'),
    ('{"type": "dance"}', "unknown_type", "configure"),
    ('{"type": "text", "text": "  "}', "bad_message", "text must be a non-empty string"),
    ('{"type": "text", "text": "\\ud800"}', "bad_text", "surrogate"),
    ('{"type": "playback", "turn_id": "x", "played_ms": 1}', "bad_message", "turn_id must be an integer"),
    ('{"type": "playback", "turn_id": 1, "played_ms": NaN}', "bad_message", "played_ms"),
    ('{"type": "playback", "turn_id": 1, "played_ms": 5, "final": "yes"}', "bad_message", "final"),
    ('{"type": "audio", "data": "@@"}', "bad_audio", "base64"),
    ('{"type": "audio"}', "bad_audio", "data is required"),
])
def test_a_bad_message_is_refused_with_its_code_and_what_was_wrong(text, code, words):
    err = refusal(text)
    assert err.code == code and words in str(err)


def test_a_refusal_shows_a_right_message_of_that_type():
    assert '{"type": "playback", "turn_id": 3' in str(refusal('{"type": "playback"}'))


def test_frames_over_the_limit_are_refused_before_parsing():
    proto = LiveProtocol(max_message_bytes=10)
    with pytest.raises(ProtocolError) as binary:
        proto.receive_bytes(bytes(12))
    with pytest.raises(ProtocolError) as text:
        proto.receive_text('{"type": "ping", "t": 1}')
    assert binary.value.code == text.value.code == "message_too_large"


def test_reply_audio_goes_out_as_numbered_binary_frames_or_base64_json():
    chunk = AudioChunk(pcm=b"\x01\x02\x03\x04", sample_rate=22050, turn_id=7, utterance_index=1, final=True)
    binary, text = LiveProtocol(binary_audio=True), LiveProtocol(binary_audio=False)
    binary.audio(chunk)
    frame = parse_audio_frame(binary.audio(chunk))
    msg = json.loads(text.audio(chunk))
    assert frame == {"turn_id": 7, "seq": 2, "sample_rate": 22050, "utterance_index": 1, "final": True,
                     "pcm": b"\x01\x02\x03\x04"}
    assert msg["type"] == "audio_chunk" and msg["seq"] == 1 and base64.b64decode(msg["data"]) == chunk.pcm


def test_connect_parameters_are_read_from_text_with_the_usual_flag_spellings():
    params, config = parse_connect({"barge_in": "off", "end_silence_ms": "450", "audio_out": "base64"},
                                   LiveConfig())
    assert params.audio_out == "base64"
    assert config.barge_in is False and config.end_silence_ms == 450 and config.min_speech_ms == 150


def test_every_live_setting_but_the_turn_limit_can_be_set_at_connect():
    settable = set(ConnectParams.model_fields) - {"audio_out", "token", "session_id"}
    assert settable == set(LiveConfig.model_fields) - {"max_turn_seconds"}
