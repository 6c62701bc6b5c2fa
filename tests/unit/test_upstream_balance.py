"""node/upstream/pool.py: hop-by-hop header stripping, member choice and per-member counters."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from multidict import CIMultiDict

from node.call import Reply
from node.errors import BadGateway, GatewayTimeout
from node.upstream.pool import HOP_BY_HOP, UpstreamPool, end_to_end
from node.upstream.settings import UpstreamSettings

URLS = ("http://a:1", "http://b:1", "http://c:1")
STANDARD = [
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Trailers",
    "Transfer-Encoding",
    "Upgrade",
]


class FakeClient:
    """An UpstreamClient that answers from a script instead of the network."""

    def __init__(self, outcome=None) -> None:
        self.outcome = outcome
        self.gate = asyncio.Event()
        self.hold: set[str] = set()  # members whose sends wait for the gate
        self.sent: list[str] = []

    async def send(self, member, method, path, headers, body) -> Reply:
        self.sent.append(member.url)
        if member.url in self.hold:
            await self.gate.wait()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return Reply.text("ok")

    async def close(self) -> None:
        pass


def pool(balance: str = "round_robin", client=None) -> UpstreamPool:
    settings = UpstreamSettings(targets=URLS, balance=balance)
    return UpstreamPool("users", settings, client or FakeClient())


def picks(p: UpstreamPool, n: int) -> list[str]:
    return [p.pick().url for _ in range(n)]


@pytest.mark.parametrize("name", STANDARD)
def test_strip_removes_each_standard_hop_by_hop_header(name):
    """Every standard hop-by-hop header is dropped; end-to-end headers stay."""
    headers = CIMultiDict({name: "x", "Content-Type": "text/plain", "X-Custom": "1"})
    headers = end_to_end(headers)
    assert list(headers.items()) == [("Content-Type", "text/plain"), ("X-Custom", "1")]


def test_standard_set_is_complete():
    """The module's hop-by-hop set is exactly RFC 9110's list plus Proxy-Connection, lower-case."""
    assert {name.lower() for name in STANDARD} == HOP_BY_HOP


def test_strip_is_case_insensitive():
    """Header names match whatever their case."""
    headers = CIMultiDict([("keep-alive", "5"), ("TRANSFER-ENCODING", "chunked"), ("Vary", "x")])
    headers = end_to_end(headers)
    assert list(headers.items()) == [("Vary", "x")]


def test_strip_removes_repeated_headers():
    """Every occurrence of a repeated hop-by-hop header goes."""
    headers = CIMultiDict([("Upgrade", "h2c"), ("upgrade", "websocket"), ("Vary", "x")])
    headers = end_to_end(headers)
    assert list(headers.items()) == [("Vary", "x")]


def test_strip_removes_headers_named_by_connection():
    """Headers the Connection header lists are hop-by-hop too, whatever the case."""
    headers = CIMultiDict(
        [("Connection", "close, X-Secret ,x-trace"), ("x-secret", "1"), ("X-Trace", "2")]
    )
    headers.add("Accept", "*/*")
    headers = end_to_end(headers)
    assert list(headers.items()) == [("Accept", "*/*")]


def test_strip_honours_every_connection_header():
    """Tokens in a second Connection header line count as well (RFC 9110 7.6.1)."""
    headers = CIMultiDict([("Connection", "keep-alive"), ("Connection", "X-Secret")])
    headers.add("X-Secret", "token")
    headers.add("Accept", "*/*")
    headers = end_to_end(headers)
    assert list(headers.items()) == [("Accept", "*/*")]


def test_strip_removes_extra_names():
    """The extra set (e.g. content-length on replies) is dropped as well."""
    headers = CIMultiDict({"Content-Length": "3", "ETag": '"x"'})
    headers = end_to_end(headers, HOP_BY_HOP | {"content-length"})
    assert list(headers.items()) == [("ETag", '"x"')]


def test_member_urls_lose_trailing_slash():
    """A target given as http://a:1/ is addressed as http://a:1 (paths are appended)."""
    settings = UpstreamSettings(targets=("http://a:1/",))
    assert UpstreamPool("u", settings, FakeClient()).members[0].url == "http://a:1"


def test_round_robin_cycles_through_members():
    """round_robin picks a, b, c, then starts over."""
    assert picks(pool(), 7) == [*URLS, *URLS, URLS[0]]


def test_round_robin_ignores_load():
    """round_robin does not skip a busy member."""
    p = pool()
    p.members[0].in_flight = 100
    assert picks(p, 3) == list(URLS)


def test_least_conn_picks_fewest_in_flight():
    """least_conn picks the member with the fewest requests in flight."""
    p = pool("least_conn")
    p.members[0].in_flight, p.members[1].in_flight, p.members[2].in_flight = 4, 1, 3
    assert picks(p, 3) == [URLS[1]] * 3


def test_least_conn_idle_pool_goes_round_robin():
    """With every member idle, least_conn spreads calls round robin."""
    assert picks(pool("least_conn"), 6) == [*URLS, *URLS]


def test_least_conn_spreads_ties_evenly():
    """Members tied for fewest in flight share the calls equally."""
    p = pool("least_conn")
    p.members[1].in_flight = 5
    assert Counter(picks(p, 6)) == {URLS[0]: 3, URLS[2]: 3}


async def test_send_counts_requests_and_in_flight():
    """A send counts a request on its member, in flight while it waits and not after."""
    client = FakeClient()
    client.hold.add(URLS[0])
    p = pool(client=client)
    task = asyncio.ensure_future(p.send("GET", "/", [], b""))
    await asyncio.sleep(0)
    assert [m.in_flight for m in p.members] == [1, 0, 0]
    client.gate.set()
    assert (await task).body == b"ok"
    assert [(m.requests, m.in_flight) for m in p.members] == [(1, 0), (0, 0), (0, 0)]


async def test_least_conn_avoids_member_busy_with_a_send():
    """While one member holds a send, least_conn sends every other call elsewhere."""
    client = FakeClient()
    client.hold.add(URLS[0])
    p = pool("least_conn", client)
    held = asyncio.ensure_future(p.send("GET", "/", [], b""))
    await asyncio.sleep(0)
    for _ in range(4):
        await p.send("GET", "/", [], b"")
    client.gate.set()
    await held
    assert client.sent[0] == URLS[0]
    assert URLS[0] not in client.sent[1:]


@pytest.mark.parametrize(
    ("error", "counter"),
    [(BadGateway("refused"), "failures"), (GatewayTimeout("slow"), "timeouts")],
)
async def test_send_counts_failures_and_timeouts(error, counter):
    """A 502 counts as a failure and a 504 as a timeout on the member, and is re-raised."""
    p = pool(client=FakeClient(error))
    with pytest.raises(type(error)):
        await p.send("GET", "/", [], b"")
    member = p.snapshot()["members"][0]
    assert (member[counter], member["in_flight"], member["requests"]) == (1, 0, 1)


async def test_a_weight_two_member_gets_about_twice_the_keys() -> None:
    """weights = [2, 1, 1] on a hash pool: the first member owns about half of 20000 keys
    (the ring's points follow the weights), and the pool reports the ring's deviation
    against those weighted fair shares."""
    settings = UpstreamSettings(targets=URLS, balance="hash", weights=(2, 1, 1))
    client = FakeClient()
    p = UpstreamPool("carts", settings, client)
    for i in range(20_000):
        await p.send("GET", "/", CIMultiDict(), b"", f"user-{i}")
    counts = Counter(client.sent)
    share = {url: counts[url] / 20_000 for url in URLS}
    assert share[URLS[0]] == pytest.approx(0.5, rel=0.1)
    assert share[URLS[1]] == pytest.approx(0.25, rel=0.1)
    assert share[URLS[2]] == pytest.approx(0.25, rel=0.1)
    assert counts[URLS[0]] / counts[URLS[1]] == pytest.approx(2.0, rel=0.15)
    snapshot = p.snapshot()
    assert snapshot["ring_max_deviation"] < 0.1  # against 50/25/25, not a third each
