"""Freshness as a shared cache computes it (RFC 9111): the Cache-Control grammar, HTTP
dates, every line of a list header, and a reply's times. All of it runs once, when a reply
is stored; a hit only subtracts its age origin from the clock (section 4.2.3).
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_tz
from functools import lru_cache

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 section 15.1: the statuses a cache may give heuristic freshness (section 4.2.2).
HEURISTIC_STATUSES = frozenset((200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501))
LAST_MODIFIED_FRACTION = 0.1  # section 4.2.2: "10% of the interval since" Last-Modified
MAX_HEURISTIC = 86400.0  # seconds: a day, the cap Squid and ATS put on that heuristic
MAX_DELTA = 2147483648  # section 1.2.2: the value of a delta-seconds too large to hold
# Seconds past its freshness a stale entry with a validator stays stored, so that the next
# request revalidates it (a 304) instead of fetching the body again.
REVALIDATE_KEEP = 600.0
# The fields that tell this cache its policy, first found wins (RFC 9213 section 2.2):
# they replace Cache-Control and Expires, and are never forwarded.
TARGETED = ("Scalenode-Cache-Control", "CDN-Cache-Control")
# Sections 5.2.2.2, 5.2.2.8, 5.2.2.10: a stale copy is never served, and when the origin
# cannot be reached the cache answers 504 rather than reuse it.
MUST_REVALIDATE = frozenset(("must-revalidate", "proxy-revalidate", "s-maxage"))
DIRECTIVE = re.compile(r'\s*([^\s=,";]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)')
SELECTING_BLANKS = re.compile(r"\s*,\s*")


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header from a CIMultiDict or a plain dict (whose keys may be in any case)."""
    value = headers.get(name)
    if value is None and not isinstance(headers, (CIMultiDict, CIMultiDictProxy)):
        lower = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lower:
                return candidate
    return value


def field_lines(headers: Mapping[str, str], name: str) -> list[str]:
    """Every line of the field `name`, in order."""
    if isinstance(headers, (CIMultiDict, CIMultiDictProxy)):
        return headers.getall(name, [])
    value = header(headers, name)
    return [] if value is None else [value]


def list_items(headers: Mapping[str, str], name: str) -> list[str]:
    """The members of a comma-separated list field over all its lines (RFC 9110 5.6.1)."""
    return [
        item.strip()
        for line in field_lines(headers, name)
        for item in line.split(",")
        if item.strip()
    ]


@lru_cache(maxsize=1024)  # a route's replies repeat the same few policies
def parse_cache_control(value: str) -> dict[str, str | None]:
    """The directives of a Cache-Control value (RFC 9111 section 5.2): names lower-cased,
    quoted arguments unquoted, an unknown directive kept (and ignored by the caller), the
    first of a repeated directive kept (section 4.2.1 allows that reading)."""
    directives: dict[str, str | None] = {}
    for match in DIRECTIVE.finditer(value):
        name, argument = match.group(1).lower(), match.group(2)
        if argument is not None:
            argument = argument.strip()
            if argument.startswith('"') and argument.endswith('"') and len(argument) > 1:
                argument = re.sub(r"\\(.)", r"\1", argument[1:-1])
        directives.setdefault(name, argument)
    return directives


def directives_of(headers: Mapping[str, str]) -> tuple[dict[str, str | None], bool]:
    """(this cache's directives, whether they came from a targeted field)."""
    for name in TARGETED:
        lines = field_lines(headers, name)
        parsed = parse_cache_control(", ".join(lines)) if lines else {}
        if parsed:
            return parsed, True
    return parse_cache_control(", ".join(field_lines(headers, "Cache-Control"))), False


def delta_seconds(value: str | None) -> float:
    """A delta-seconds argument; malformed (or absent argument) is 0: stale (section 4.2.1)."""
    if value is None or not value.isdigit():
        return 0.0
    return float(min(int(value), MAX_DELTA))


def optional_seconds(value: str | None) -> float | None:
    return float(min(int(value), MAX_DELTA)) if value is not None and value.isdigit() else None


@lru_cache(maxsize=1024)
def http_date(value: str | None) -> float | None:
    """An HTTP-date (any of the three forms of RFC 9110 5.6.7) as epoch seconds, or None."""
    if not value:
        return None
    try:  # whatever a client or origin sends: email.utils raises on some garbage
        parsed = parsedate_tz(value.strip())
        if parsed is None:
            return None
        year = parsed[0]
        if year < 100:  # RFC 850's two-digit year: the nearest century, RFC 9110 5.6.7
            parsed = (year + (2000 if year < 70 else 1900), *parsed[1:])
        return float(calendar.timegm(parsed[:6]) - (parsed[9] or 0))
    except (ValueError, OverflowError, IndexError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class Lifetime:
    """The route's defaults: `ttl` for replies that declare no freshness (0: none), and
    the stale windows."""

    ttl: float
    stale_while_revalidate: float
    stale_if_error: float


@dataclass(frozen=True, slots=True)
class Assessment:
    """How a stored reply ages: `born` is when its age was 0 (section 4.2.3's corrected
    initial age, taken back from the time received); the rest are seconds."""

    born: float
    lifetime: float
    stale_while_revalidate: float
    stale_if_error: float
    validated: bool  # it has an ETag or Last-Modified
    hidden: tuple[str, ...]  # fields `private="..."` keeps out of the stored copy
    must_revalidate: bool = False  # must-revalidate, proxy-revalidate or s-maxage

    def times(self) -> tuple[float, float, float, float, float]:
        fresh = self.born + self.lifetime
        swr, sie = fresh + self.stale_while_revalidate, fresh + self.stale_if_error
        keep = max(swr, sie, fresh + REVALIDATE_KEEP if self.validated else fresh)
        return self.born, fresh, swr, sie, keep


def corrected_born(headers: Mapping[str, str], request_time: float, response_time: float) -> float:
    """Section 4.2.3: response_time - corrected_initial_age. The Date has a resolution of a
    second, so it is compared with the receipt time at that resolution: a reply sent in
    the same second as its Date has apparent age 0."""
    date = http_date(header(headers, "Date"))
    apparent = max(0.0, math.floor(response_time) - date) if date is not None else 0.0
    given = optional_seconds((header(headers, "Age") or "").strip()) or 0.0
    corrected_age = given + max(0.0, response_time - request_time)
    return response_time - max(apparent, corrected_age)


def explicit_lifetime(
    headers: Mapping[str, str], directives: dict[str, str | None], targeted: bool, now: float
) -> float | None:
    """Section 4.2.1: s-maxage, max-age, then Expires - Date; None when none is given."""
    for name in ("s-maxage", "max-age"):
        if name in directives:
            return delta_seconds(directives[name])
    if targeted:  # RFC 9213 section 2.2: a targeted field replaces Expires too
        return None
    lines = field_lines(headers, "Expires")
    if not lines:
        return None
    expires = http_date(lines[0]) if len(lines) == 1 else None
    if expires is None:  # section 5.3: an invalid Expires (e.g. "0") is in the past
        return 0.0
    date = http_date(header(headers, "Date"))
    return max(0.0, expires - (now if date is None else date))


def heuristic_lifetime(
    headers: Mapping[str, str], status: int, ttl: float, now: float
) -> float | None:
    """Section 4.2.2, for heuristically cacheable statuses only: the route's `ttl` when
    positive, else a tenth of the time since Last-Modified (capped). None: not cacheable."""
    if status not in HEURISTIC_STATUSES:
        return None
    if ttl > 0:
        return ttl
    modified = http_date(header(headers, "Last-Modified"))
    if modified is None:
        return 0.0
    date = http_date(header(headers, "Date")) or now
    return min(max(0.0, date - modified) * LAST_MODIFIED_FRACTION, MAX_HEURISTIC)


def assess(
    headers: Mapping[str, str],
    status: int,
    default: Lifetime,
    authorized: bool,
    request_time: float,
    now: float,
) -> Assessment | None:
    """How a reply is kept, or None when a shared cache must not store it (section 3)."""
    directives, targeted = directives_of(headers)
    if "no-store" in directives:
        return None
    private = directives.get("private", "")
    if "private" in directives and not private:  # unqualified private: a user's own reply
        return None
    shared = "public" in directives or "s-maxage" in directives
    if authorized and not (shared or "must-revalidate" in directives):  # section 3.5
        return None
    lifetime = explicit_lifetime(headers, directives, targeted, now)
    if lifetime is None:
        lifetime = heuristic_lifetime(headers, status, default.ttl, now)
        if lifetime is None:
            return None
    validated = header(headers, "ETag") is not None or header(headers, "Last-Modified") is not None
    if "no-cache" in directives:  # section 5.2.2.4: reused only once revalidated
        lifetime = 0.0
    if lifetime <= 0 and not validated:
        return None  # stale at once with nothing to revalidate it by: not worth a slot
    # Section 4.2.4: these forbid serving it stale, whatever the route allows.
    must_revalidate = not MUST_REVALIDATE.isdisjoint(directives)
    strict = must_revalidate or "no-cache" in directives
    swr = optional_seconds(directives.get("stale-while-revalidate"))
    sie = optional_seconds(directives.get("stale-if-error"))
    return Assessment(
        corrected_born(headers, request_time, now),
        lifetime,
        0.0 if strict else default.stale_while_revalidate if swr is None else swr,
        0.0 if strict else default.stale_if_error if sie is None else sie,
        validated,
        tuple(name.strip().lower() for name in (private or "").split(",") if name.strip()),
        must_revalidate,
    )


def normalised(headers: Mapping[str, str], name: str) -> str | None:
    """A selecting header's value over all its lines, blanks around commas removed
    (section 4.1); None when absent."""
    lines = field_lines(headers, name)
    if not lines:
        return None
    return SELECTING_BLANKS.sub(",", ",".join(line.strip() for line in lines))
