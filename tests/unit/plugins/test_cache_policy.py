"""Cache keys, Cache-Control parsing and what may be stored: pure functions, no I/O."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from node.call import Reply
from node.errors import ConfigError
from node.schema import build
from plugins.cache.entry import Entry, header, stored_headers
from plugins.cache.freshness import Assessment, Lifetime, assess, parse_cache_control
from plugins.cache.policy import MAX_KEY_LENGTH, KeyBuilder, storable
from plugins.cache.settings import CacheSettings

DEFAULT = Lifetime(30.0, 0.0, 0.0)


def lifetime(cache_control: str | None, authorized: bool = False) -> Assessment | None:
    """How a 200 with this Cache-Control (and no Date) is kept, received at t=100."""
    headers = CIMultiDict({"Cache-Control": cache_control} if cache_control else {})
    return assess(headers, 200, DEFAULT, authorized, 100.0, 100.0)


def test_key_sorts_the_query() -> None:
    """?a=1&b=2 and ?b=2&a=1 are one entry."""
    key = KeyBuilder("/items/{id}", ())
    assert key("/items/1", "a=1&b=2", {}) == key("/items/1", "b=2&a=1", {})


def test_key_separates_paths_queries_and_routes() -> None:
    """Different paths, queries or routes never share a key."""
    one, two = KeyBuilder("/a", ()), KeyBuilder("/b", ())
    assert one("/x", "", {}) != one("/y", "", {})
    assert one("/x", "q=1", {}) != one("/x", "q=2", {})
    assert one("/x", "", {}) != two("/x", "", {})


def test_key_includes_vary_header_values() -> None:
    """A vary header's value is part of the key; others are not."""
    key = KeyBuilder("/r", ("Accept",))
    json = key("/x", "", CIMultiDict({"Accept": "application/json", "X-Other": "1"}))
    html = key("/x", "", CIMultiDict({"Accept": "text/html"}))
    assert json != html
    assert json == key("/x", "", CIMultiDict({"accept": "application/json"}))


def test_long_keys_are_bounded_and_distinct() -> None:
    """A 10 kB path gives a key of at most MAX_KEY_LENGTH characters, unique by hash."""
    key = KeyBuilder("/r", ())
    a, b = key("/" + "a" * 10_000, "", {}), key("/" + "a" * 9_999 + "b", "", {})
    assert len(a) <= MAX_KEY_LENGTH and len(b) <= MAX_KEY_LENGTH
    assert a != b


def test_parse_cache_control() -> None:
    """Directives are lower-cased; arguments unquoted; flags map to None."""
    parsed = parse_cache_control('Max-Age=60, no-transform,  s-maxage="120" ,')
    assert parsed == {"max-age": "60", "no-transform": None, "s-maxage": "120"}


def test_parse_cache_control_quoted_commas_and_duplicates() -> None:
    """A quoted argument may hold commas; the first of a repeated directive is kept."""
    parsed = parse_cache_control('private="a, b", max-age=5, foo="x\\"y", max-age=9')
    assert parsed == {"private": "a, b", "max-age": "5", "foo": 'x\\"y'.replace("\\", "", 1)}


@pytest.mark.parametrize("value", ["no-store", "private", "no-cache", "max-age=0", "max-age=x"])
def test_uncacheable_directives(value: str) -> None:
    """no-store, private, and (without a validator) no-cache or stale-at-once: not stored."""
    assert lifetime(value) is None


def test_s_maxage_wins_over_max_age_and_default() -> None:
    """s-maxage > max-age > the route's ttl."""
    assert lifetime("max-age=10, s-maxage=20").lifetime == 20  # type: ignore[union-attr]
    assert lifetime("public, max-age=10").lifetime == 10  # type: ignore[union-attr]
    assert lifetime(None).lifetime == DEFAULT.ttl  # type: ignore[union-attr]


def test_stale_directives_override_the_route() -> None:
    """The origin's stale-while-revalidate / stale-if-error beat the route's settings."""
    got = lifetime("max-age=5, stale-while-revalidate=7, stale-if-error=9")
    assert got is not None
    assert (got.lifetime, got.stale_while_revalidate, got.stale_if_error) == (5.0, 7.0, 9.0)


def test_authorized_requests_need_an_explicitly_shared_reply() -> None:
    """With Authorization, only public, s-maxage or must-revalidate replies are stored."""
    assert lifetime(None, authorized=True) is None
    assert lifetime("max-age=10", authorized=True) is None
    assert lifetime("public, max-age=10", authorized=True) is not None
    assert lifetime("must-revalidate, max-age=10", authorized=True) is not None


def test_storable_shapes() -> None:
    """Status, size, Set-Cookie and streams decide whether a reply may be stored."""
    statuses = frozenset({200})
    assert storable(Reply(200, b"x"), statuses, 10)
    assert not storable(Reply(500, b"x"), statuses, 10)
    assert not storable(Reply(200, b"x" * 11), statuses, 10)
    assert not storable(Reply(200, b"x", {"Set-Cookie": "a=1"}), statuses, 10)


def test_header_lookup_ignores_case_in_plain_dicts() -> None:
    """A handler's dict may spell a header in any case."""
    assert header({"cache-control": "no-store"}, "Cache-Control") == "no-store"
    assert header(CIMultiDict({"CACHE-CONTROL": "x"}), "Cache-Control") == "x"


def test_entry_round_trips_through_its_encoding() -> None:
    """What L2 stores decodes to the same reply, repeated headers included."""
    headers = stored_headers([("Link", "a"), ("Link", "b"), ("Age", "9"), ("X-A", "1")])
    entry = Entry(200, b"body\nwith newline", headers, "text/plain", "/p", ("t1",), (1, 2, 3, 4, 5))
    again = Entry.decode(entry.encode())
    assert again.body == entry.body and again.tags == ("t1",) and again.path == "/p"
    assert list(again.headers.items()) == [("Link", "a"), ("Link", "b"), ("X-A", "1")]
    reply = again.reply("HIT-L2", 11.5)
    assert reply.headers["Age"] == "10" and reply.headers["X-Cache"] == "HIT-L2"


def test_selecting_values_and_must_revalidate_survive_the_encoding() -> None:
    """An L2 entry keeps its Vary selection and its must-revalidate mark; its validators
    are read from its headers."""
    headers = stored_headers([("ETag", '"a"'), ("Last-Modified", "Sun, 06 Dec 2026 00:00:00 GMT")])
    selects = (("accept-language", "en"), ("accept", None))
    entry = Entry(200, b"b", headers, None, "/p", (), (1, 2, 3, 4, 5), selects, True)
    again = Entry.decode(entry.encode())
    assert (again.selects, again.must_revalidate) == (selects, True)
    assert (again.etag, again.last_modified) == ('"a"', "Sun, 06 Dec 2026 00:00:00 GMT")


def test_an_entry_of_the_previous_encoding_does_not_decode() -> None:
    """A blob without the must-revalidate mark (the earlier layout) is refused: a miss."""
    blob = b'[200,null,[],"/p",[],[1,2,3,4,5],[]]\nbody'
    with pytest.raises(ValueError):
        Entry.decode(blob)


@pytest.mark.parametrize(
    ("cache_control", "strict"),
    [
        ("max-age=60, must-revalidate", True),
        ("max-age=60, proxy-revalidate", True),
        ("s-maxage=60", True),
        ("max-age=60, no-cache", False),
        ("max-age=60", False),
    ],
)
def test_must_revalidate_is_marked_for_its_three_directives(
    cache_control: str, strict: bool
) -> None:
    """Section 5.2.2.2: must-revalidate, proxy-revalidate and s-maxage mark the entry (an
    unreachable origin is then a 504); no-cache alone does not."""
    headers = CIMultiDict({"Cache-Control": cache_control, "ETag": '"a"'})
    assessment = assess(headers, 200, DEFAULT, False, 100.0, 100.0)
    assert assessment is not None and assessment.must_revalidate is strict


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"ttl": -1}, "routes[0].cache.ttl: must be >= 0"),
        ({"l1_ttl": 99}, "routes[0].cache.l1_ttl: must be between"),
        ({"statuses": [99]}, "routes[0].cache.statuses[0]: must be an HTTP status"),
        ({"vary": ["Accept:"]}, "routes[0].cache.vary[0]: must be a header name"),
        ({"lock_timeout": 0}, "routes[0].cache.lock_timeout: must be > 0"),
        ({"tll": 3}, "routes[0].cache.tll: unknown key; did you mean 'ttl'?"),
    ],
)
def test_bad_settings_name_their_key(table: dict, message: str) -> None:
    """Each bad setting raises a ConfigError naming its key path."""
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(CacheSettings, table, "routes[0].cache")
