"""node/call.py and node/http.RequestCall: the Call and Reply that plugins and targets see."""

from __future__ import annotations

from unittest import mock

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from node.call import MAX_REQUEST_ID, Call, Reply
from node.http import RequestCall


def peer(address: str) -> mock.Mock:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (
        (address, 50123) if key == "peername" else default
    )
    return transport


def call_for(
    method="GET", path="/items/7?a=1&a=2&b=", headers=None, match_info=None, body=b""
) -> Call:
    request = make_mocked_request(
        method,
        path,
        headers=CIMultiDict(headers or {"Host": "example.com:8080"}),
        match_info=match_info or {},
        transport=peer("203.0.113.9"),
    )
    return RequestCall(request, "items", body)


def with_request_id(value: str) -> Call:
    return Call("GET", "/", headers=CIMultiDict({"X-Request-Id": value}))


async def test_request_call_maps_method_path_and_route():
    """The call carries the request's method, path (without query) and the route label."""
    call = call_for("PUT")
    assert (call.method, call.path, call.route) == ("PUT", "/items/7", "items")


async def test_request_call_maps_params():
    """Route {name} matches arrive as call.params."""
    assert call_for(match_info={"key": "7"}).params["key"] == "7"


async def test_request_call_keeps_raw_query_string():
    """The raw query string is kept for proxying, untouched."""
    assert call_for().query_string == "a=1&a=2&b="


async def test_request_call_maps_headers_case_insensitively():
    """Request headers are readable in any case."""
    call = call_for(headers={"Host": "h", "X-Custom": "v"})
    assert call.headers["x-custom"] == "v"


async def test_request_call_maps_client_scheme_and_host():
    """client is the peer address, scheme and host come from the request."""
    call = call_for()
    assert (call.client, call.scheme, call.host) == ("203.0.113.9", "http", "example.com:8080")


async def test_request_call_carries_body():
    """The body read by the adapter is the call's body, and call.json() parses it."""
    call = call_for("POST", body=b'{"n": 1}')
    assert call.body == b'{"n": 1}'
    assert call.json() == {"n": 1}


def test_query_is_parsed_only_on_first_use():
    """call.query is not parsed until read, and is parsed once."""
    call = Call("GET", "/", query_string="a=1")
    assert call._query is None
    assert call.query is call.query


def test_query_keeps_repeated_keys_and_blank_values():
    """Repeated keys give every value in order; a blank value is kept as ''."""
    query = Call("GET", "/", query_string="a=1&a=2&b=&c=%20x").query
    assert query.getall("a") == ["1", "2"]
    assert query["b"] == ""
    assert query["c"] == " x"


def test_request_id_is_generated_once():
    """Without X-Request-Id, one id is made and every read returns the same one."""
    call = Call("GET", "/")
    first = call.request_id
    assert len(first) == 24
    int(first, 16)
    assert call.request_id == first


def test_request_ids_differ_between_calls():
    """Two calls never share a generated id."""
    assert Call("GET", "/").request_id != Call("GET", "/").request_id


def test_given_request_id_is_kept():
    """A client's X-Request-Id is used as the call's id."""
    assert with_request_id("abc-123").request_id == "abc-123"


def test_request_id_of_max_length_is_kept():
    """An X-Request-Id of exactly 128 characters is still kept."""
    value = "r" * MAX_REQUEST_ID
    assert with_request_id(value).request_id == value


def test_overlong_request_id_is_replaced():
    """An X-Request-Id longer than 128 characters is replaced by a generated one."""
    call = with_request_id("r" * (MAX_REQUEST_ID + 1))
    assert len(call.request_id) == 24
    assert call.request_id == call.request_id


def test_call_json_raises_value_error_on_bad_body():
    """A body that is not JSON raises a ValueError from call.json()."""
    with pytest.raises(ValueError):
        Call("POST", "/", body=b"{not json").json()


def test_reply_json_sets_json_content_type():
    """Reply.json encodes the data and marks it application/json."""
    reply = Reply.json({"ok": True, "n": [1, 2]}, status=201, headers={"X-A": "1"})
    assert reply.status == 201
    assert reply.content_type == "application/json"
    assert orjson.loads(reply.body) == {"ok": True, "n": [1, 2]}
    assert reply.headers == {"X-A": "1"}


def test_reply_text_sets_utf8_text_content_type():
    """Reply.text encodes as UTF-8 and marks it text/plain; charset=utf-8."""
    reply = Reply.text("héllo")
    assert reply.status == 200
    assert reply.content_type == "text/plain; charset=utf-8"
    assert reply.body == "héllo".encode()


def test_replies_do_not_share_header_dicts():
    """Each Reply gets its own headers dict, so a plugin stamping one leaves others alone."""
    first, second = Reply.text("a"), Reply.json({})
    first.headers["X-Stamped"] = "1"
    assert "X-Stamped" not in second.headers
    assert "X-Stamped" not in Reply().headers
