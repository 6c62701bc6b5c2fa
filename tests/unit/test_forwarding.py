"""node/forwarding.py: which X-Forwarded-For hop is the client."""

from __future__ import annotations

import pytest

from node.forwarding import TrustedProxies

LB = TrustedProxies(("10.0.0.0/8", "192.168.1.1"))


def test_no_trusted_proxies_means_peer_is_client():
    """With no trusted proxies configured, X-Forwarded-For is never believed."""
    assert TrustedProxies(()).client_address("10.0.0.2", "1.1.1.1") == "10.0.0.2"


def test_untrusted_peer_ignores_forwarded_for():
    """A peer outside the trusted ranges cannot forge its address with X-Forwarded-For."""
    assert LB.client_address("203.0.113.9", "1.1.1.1") == "203.0.113.9"


def test_trusted_peer_without_header_is_client():
    """A trusted peer that sends no X-Forwarded-For is itself the client."""
    assert LB.client_address("10.0.0.2", None) == "10.0.0.2"
    assert LB.client_address("10.0.0.2", "") == "10.0.0.2"


def test_trusted_peer_single_hop():
    """Behind one trusted load balancer, the forwarded address is the client."""
    assert LB.client_address("10.0.0.2", "1.1.1.1") == "1.1.1.1"


def test_single_trusted_address_entry():
    """A bare address (no prefix length) in trusted_proxies trusts that one host."""
    assert LB.client_address("192.168.1.1", "1.1.1.1") == "1.1.1.1"
    assert LB.client_address("192.168.1.2", "1.1.1.1") == "192.168.1.2"


def test_right_most_untrusted_hop_wins_over_spoofed_left_entries():
    """Entries the client wrote itself (left of the real client) are ignored."""
    forwarded = "6.6.6.6, 7.7.7.7, 1.1.1.1, 10.0.0.5"
    assert LB.client_address("10.0.0.2", forwarded) == "1.1.1.1"


def test_chain_of_trusted_proxies_is_walked():
    """Several trusted hops on the right are skipped to reach the client."""
    assert LB.client_address("10.0.0.2", "1.1.1.1,10.0.0.4 ,10.0.0.3") == "1.1.1.1"


def test_all_hops_trusted_gives_left_most():
    """When every hop is trusted, the left-most one is the best guess."""
    assert LB.client_address("10.0.0.2", "10.0.0.9, 10.0.0.8") == "10.0.0.9"


@pytest.mark.parametrize("forwarded", [",", " , ,", "   "])
def test_empty_entries_fall_back_to_peer(forwarded):
    """A header with only separators and blanks gives the peer."""
    assert LB.client_address("10.0.0.2", forwarded) == "10.0.0.2"


def test_empty_entries_are_skipped():
    """Blank entries between hops are not hops."""
    assert LB.client_address("10.0.0.2", "1.1.1.1, , 10.0.0.3,") == "1.1.1.1"


def test_garbage_left_of_client_is_ignored():
    """Garbage the client put in front of its address never becomes the client."""
    assert LB.client_address("10.0.0.2", "unknown, <script>, 1.1.1.1") == "1.1.1.1"


@pytest.mark.parametrize("garbage", ["unknown", "10.0.0.0/8", "10.0.0.300", "", "_"])
def test_garbage_is_never_trusted(garbage):
    """Strings that are not one IP address are never treated as a trusted proxy."""
    assert LB.is_trusted(garbage) is False


def test_ipv6_trusted_range():
    """IPv6 peers and hops are matched against IPv6 ranges."""
    proxies = TrustedProxies(("2001:db8::/32",))
    forwarded = "2a00:1450::1, 2001:db8:ffff::7"
    assert proxies.client_address("2001:db8::1", forwarded) == "2a00:1450::1"


def test_ipv6_peer_outside_range_is_untrusted():
    """An IPv6 peer outside the trusted range keeps its own address."""
    proxies = TrustedProxies(("2001:db8::/32",))
    assert proxies.client_address("2a00::1", "1.1.1.1") == "2a00::1"


def test_ipv4_range_does_not_trust_ipv6_peer():
    """Mixing families never trusts by accident: an IPv6 peer is not in an IPv4 range."""
    assert LB.client_address("::1", "1.1.1.1") == "::1"


def test_ipv4_mapped_ipv6_peer_matches_ipv4_range():
    """On a dual-stack listener a load balancer at 10.0.0.2 appears as ::ffff:10.0.0.2."""
    assert LB.client_address("::ffff:10.0.0.2", "1.1.1.1") == "1.1.1.1"
