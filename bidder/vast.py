"""What a video or audio creative's VAST (or DAAST) markup says about it: protocol, duration, linearity and the
MIME types of its media files.

A player lists the protocols it takes and the ad lengths it allows (OpenRTB `video.protocols`, `minduration`,
`maxduration`, `rqddurs`, `linearity`); a creative that is not known to meet them must not be bid.  The markup
already states all three, so a campaign need not repeat them (it may, to override what is read here).
"""

from __future__ import annotations

import math
import re
from xml.etree import ElementTree

# OpenRTB / AdCOM "Creative Subtypes - Audio/Video": (markup, version) -> (inline code, wrapper code)
PROTOCOLS: dict[tuple[str, str], tuple[int, int]] = {
    ("VAST", "1.0"): (1, 4), ("VAST", "2.0"): (2, 5), ("VAST", "3.0"): (3, 6), ("VAST", "4.0"): (7, 8),
    ("VAST", "4.1"): (11, 12), ("VAST", "4.2"): (13, 14), ("VAST", "4.3"): (15, 16), ("DAAST", "1.0"): (9, 10),
}
_ROOT = re.compile(r"<(VAST|DAAST)\b[^>]*?\bversion\s*=\s*[\"']([0-9]+(?:\.[0-9]+)?)[\"']")
_DURATION = re.compile(r"<Duration>\s*([0-9]{1,2}):([0-9]{2}):([0-9]{2}(?:\.[0-9]{1,3})?)\s*</Duration>")


_TAG_URL = re.compile(r"https?://\S+")


def markup_problem(adm: str) -> str:
    """Why a video or audio creative's `adm` cannot be played ('' when it can): it must be well-formed VAST or DAAST
    markup, or the URL of a VAST tag.  A truncated or foreign document would be bid into players that list its
    version and fail there, where the exchange counts it against this bidder."""
    text = adm.strip()
    if not text.startswith("<"):
        return "" if _TAG_URL.fullmatch(text) else "is neither VAST/DAAST markup nor the http(s):// URL of a VAST tag"
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as e:
        return f"is not well-formed XML ({e})"
    name = root.tag.rsplit("}", 1)[-1] if isinstance(root.tag, str) else "?"
    if name not in ("VAST", "DAAST"):
        return f"is XML whose root element is <{name}>, not <VAST> or <DAAST>"
    return ""


def protocol(adm: str) -> int:
    """The protocol code of the markup (e.g. 7 for an inline VAST 4.0 ad); 0 when it is not VAST/DAAST markup."""
    m = _ROOT.search(adm)
    if m is None:
        return 0
    version = m.group(2) if "." in m.group(2) else m.group(2) + ".0"
    codes = PROTOCOLS.get((m.group(1), version))
    if codes is None:
        return 0
    return codes[1] if "<Wrapper" in adm else codes[0]


def duration(adm: str) -> int:
    """The ad's length in whole seconds, rounded up (a 15.2 s ad does not fit a 15 s limit); 0 when not stated.
    Of a VAST with several ads or linear creatives, the longest: each must fit the player's limit."""
    return max((math.ceil(int(h) * 3600 + int(m) * 60 + float(s)) for h, m, s in _DURATION.findall(adm)), default=0)


_MEDIA_TYPE = re.compile(r"<MediaFile\b[^>]*?\btype\s*=\s*[\"']([^\"'\s]{1,100})[\"']", re.IGNORECASE)


def mimes(adm: str) -> tuple[str, ...]:
    """The MIME types of the ad's media files, in order, each once (lower case); () when the markup lists none
    (a wrapper, or a VAST URL)."""
    return tuple(dict.fromkeys(t.lower() for t in _MEDIA_TYPE.findall(adm)))


_MEDIA_FILE = re.compile(r"<MediaFile\b[^>]*>", re.IGNORECASE)
_VPAID = re.compile(r"\bapiFramework\s*=\s*[\"']\s*VPAID\s*[\"']", re.IGNORECASE)
VPAID_2 = 2  # AdCOM API framework code of VPAID 2.0


def apis(adm: str) -> tuple[int, ...]:
    """The API frameworks the ad needs to play: VPAID 2.0 when every media file is a VPAID unit (with one plain
    file beside them, a player without VPAID plays that); () otherwise."""
    files = _MEDIA_FILE.findall(adm)
    return (VPAID_2,) if files and all(_VPAID.search(f) for f in files) else ()


def linearity(adm: str) -> int:
    """1 for a linear ad (in-stream), 2 for a non-linear one (overlay); 0 when the markup says neither."""
    if "<Linear" in adm:
        return 1
    if "<NonLinearAds" in adm or "<NonLinear" in adm:
        return 2
    return 0
