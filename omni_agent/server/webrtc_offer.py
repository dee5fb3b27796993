"""The WebRTC offer check, sans-IO: an HTTP body in, a checked :class:`Offer` or an
:class:`OfferError` out.

``POST /v1/webrtc/offer`` takes the client's SDP offer either as the raw SDP
(``Content-Type: application/sdp``, the WHIP convention) or as JSON ``{"sdp": "...",
"type": "offer"}`` (what ``RTCPeerConnection.localDescription`` serialises to, as
Pipecat's small-WebRTC transport sends it). Before aiortc sees it, the offer is checked
here so every refusal is a clear 400 instead of an exception from deep inside aiortc::

    offer = parse_offer(body, "application/sdp", max_bytes=65536)
    offer.has_datachannel        # True when the client opened a data channel

What is refused: a body that is not an SDP offer, an offer with no audio section, one
whose audio offers no Opus (we speak Opus only: G.711 would be 8 kHz audio for the ears),
video (not supported), more than one audio section, and an offer without the DTLS
fingerprint or ICE credentials WebRTC requires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .security import InvalidJSON, parse_json

__all__ = ["Offer", "OfferBody", "OfferError", "check_sdp", "parse_offer"]

_LINE = re.compile(r"^[a-z]=")
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)", re.IGNORECASE)


class OfferError(Exception):
    """A refused offer: ``code`` and ``message`` go to the client as a 400 (or 413/415)."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class OfferBody(BaseModel):
    """The JSON form of an offer: ``{"sdp": "v=0...", "type": "offer"}``."""

    model_config = ConfigDict(extra="forbid")
    sdp: str
    type: Literal["offer"] = "offer"


@dataclass(frozen=True, slots=True)
class Offer:
    """A checked SDP offer: the text for aiortc and what it asks for."""

    sdp: str
    audio_codecs: tuple[str, ...]
    has_datachannel: bool


def parse_offer(body: bytes, content_type: str, *, max_bytes: int) -> Offer:
    """The offer in an HTTP body (raw SDP or JSON), checked; raises :class:`OfferError`."""
    if len(body) > max_bytes:
        raise OfferError("offer_too_large", f"the offer is {len(body)} bytes; at most {max_bytes} "
                         "are accepted", 413)
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/sdp":
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError:
            raise OfferError("bad_offer", "the SDP offer is not UTF-8 text") from None
    elif kind == "application/json":
        try:
            data = parse_json(body)
            sdp = OfferBody.model_validate(data).sdp
        except InvalidJSON as e:
            raise OfferError("bad_json", f"the body is not valid JSON ({e}): send "
                             '{"sdp": "v=0...", "type": "offer"}') from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise OfferError("bad_offer", f"{where}: {first['msg']}: send "
                             '{"sdp": "v=0...", "type": "offer"}') from None
    else:
        raise OfferError("unsupported_media_type", "send the offer as 'Content-Type: application/sdp' "
                         "(the SDP itself) or 'application/json' ({\"sdp\": ..., \"type\": \"offer\"})",
                         415)
    return check_sdp(sdp)


def check_sdp(sdp: str) -> Offer:
    """Check an SDP offer's shape and media; raises :class:`OfferError` naming the problem."""
    lines = [ln for ln in sdp.replace("\r\n", "\n").split("\n") if ln.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise OfferError("bad_offer", "this is not an SDP offer: it must start with 'v=0' "
                         "(send RTCPeerConnection.localDescription.sdp after createOffer)")
    for i, ln in enumerate(lines, 1):
        if not _LINE.match(ln):
            raise OfferError("bad_offer", f"SDP line {i} is malformed ({ln[:40]!r}): every line is "
                             "'<letter>=<value>'")
    session: list[str] = []
    media: list[list[str]] = []
    for ln in lines:
        if ln.startswith("m="):
            media.append([ln])
        elif media:
            media[-1].append(ln)
        else:
            session.append(ln)
    if not media:
        raise OfferError("no_audio", "the offer has no media: add an audio track (or an audio "
                         "transceiver) before createOffer")
    audio: list[list[str]] = []
    has_dc = False
    for m in media:
        parts = m[0][2:].split()
        if len(parts) < 3:
            raise OfferError("bad_offer", f"malformed media line {m[0][:60]!r}")
        kind = parts[0]
        if kind == "audio":
            audio.append(m)
        elif kind == "application":
            has_dc = True
        elif kind == "video":
            raise OfferError("unsupported_media", "video is not supported over this endpoint: offer "
                             "audio (and a data channel) only")
        else:
            raise OfferError("unsupported_media", f"media {kind!r} is not supported: offer audio "
                             "(and a data channel) only")
    if not audio:
        raise OfferError("no_audio", "the offer has no audio section: add a microphone track or "
                         "pc.addTransceiver('audio') before createOffer")
    if len(audio) > 1:
        raise OfferError("unsupported_media", f"the offer has {len(audio)} audio sections: one "
                         "microphone track per peer connection is supported")
    codecs = tuple(rtpmap.group(2).lower() for ln in audio[0] if (rtpmap := _RTPMAP.match(ln)))
    if "opus" not in codecs:
        shown = ", ".join(sorted(set(codecs))) or "none named"
        raise OfferError("unsupported_codec", f"the offer's audio has no Opus (it offers {shown}): "
                         "this server speaks Opus/48000 only")
    def has(prefix: str, section: list[str]) -> bool:
        return any(ln.startswith(prefix) for ln in section) or any(ln.startswith(prefix) for ln in session)

    for m in media:
        if not has("a=fingerprint:", m):
            raise OfferError("bad_offer", "the offer has no DTLS fingerprint (a=fingerprint): "
                             "WebRTC media must be encrypted")
        if not (has("a=ice-ufrag:", m) and has("a=ice-pwd:", m)):
            raise OfferError("bad_offer", "the offer has no ICE credentials (a=ice-ufrag, a=ice-pwd)")
    return Offer(sdp=sdp if sdp.endswith("\n") else sdp + "\r\n", audio_codecs=codecs,
                 has_datachannel=has_dc)
