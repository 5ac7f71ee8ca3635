"""MCP streamable HTTP headers (Mcp-Method, Mcp-Name, Mcp-Param-*) on the Envoy path: real CheckRequest
protobufs through both decoders and the servicer, then the same requests through a real Envoy."""
import base64
import json
import socket

import pytest
from envoy.service.auth.v3 import external_auth_pb2 as ea

import authz
from authz.server._wire import decode_envoy_check
from authz.server.decider import Decider
from authz.server.envoy import EnvoyAuthorizationServicer, Limits, MappingError, check_view, map_check_request
from harness import AuthzServer, EchoUpstream, Envoy

POLICIES = r'''
@id("mcp-handshake")
permit(principal, action in [Action::"initialize", Action::"tools/list"], resource == Route::"/mcp");

@id("search")
permit(principal, action == Action::"tools/call", resource == Tool::"search")
unless { context.mcp has arguments && context.mcp.arguments has query && context.mcp.arguments.query == "forbidden" };

@id("db-in-eu")
permit(principal, action == Action::"tools/call", resource == Tool::"db")
when { context.mcp.param_headers has region && context.mcp.param_headers.region == "eu-west 1" };

@id("no-rm")
forbid(principal, action, resource == Tool::"rm");
'''


def envoy_request(method="POST", path="/mcp", headers=None, body=None, raw_headers=None, ext=None):
    """A CheckRequest shaped as Envoy 1.40 sends it: request.time set, empty metadata contexts."""
    r = ea.CheckRequest()
    a = r.attributes
    a.source.address.socket_address.address = "127.0.0.1"
    a.source.address.socket_address.port_value = 40000
    a.destination.address.socket_address.address = "127.0.0.1"
    a.destination.address.socket_address.port_value = 10000
    a.request.time.seconds, a.request.time.nanos = 1_796_590_541, 681_584_000
    a.metadata_context.SetInParent()
    a.route_metadata_context.SetInParent()
    h = a.request.http
    h.id, h.method, h.path, h.host, h.scheme, h.protocol = "1", method, path, "api", "http", "HTTP/1.1"
    for k, v in {":method": method, ":path": path, ":authority": "api", **(headers or {})}.items():
        h.headers[k] = v
    for k, v in (raw_headers or {}).items():
        h.header_map.headers.add(key=k, raw_value=v)
    if body is not None:
        h.raw_body = body if isinstance(body, bytes) else json.dumps(body).encode()
    for k, v in (ext or {}).items():
        a.context_extensions[k] = v
    return r


def mapped(req, limits=None):
    """The Cedar requests of `req` from the wire decoder, after checking the protobuf path maps it the same."""
    limits = limits or Limits()
    view = decode_envoy_check(req.SerializeToString(), limits.max_headers)
    assert view is not None, "the wire decoder declined the request"
    assert view[:6] + view[7:] == check_view(req, limits)[:6] + check_view(req, limits)[7:]
    try:
        from_wire = map_check_request(view, limits)
    except MappingError as e:
        with pytest.raises(MappingError) as from_message:
            map_check_request(req, limits)
        assert (from_message.value.code, str(from_message.value)) == (e.code, str(e))
        raise
    assert map_check_request(req, limits) == from_wire
    return from_wire


def refused(req) -> str:
    """The deny reason the mapping gives `req` (both paths)."""
    with pytest.raises(MappingError) as e:
        mapped(req)
    return e.value.code


def rpc(method, params=None, id_=1):
    doc = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        doc["params"] = params
    return doc


def b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


# -- in process: the mapping ------------------------------------------------------------------------


def test_a_request_as_envoy_sends_it_takes_the_wire_decoder():
    [r] = mapped(envoy_request("GET", "/public/doc?page=2"))
    assert (r["action"]["id"], r["resource"]["id"]) == ("GET", "/public/doc")


def test_damaged_envoy_requests_are_declined_or_read_as_protobuf_reads_them():
    # Envoy's own shape (request.time, empty metadata contexts), cut, flipped, grown or shrunk: the wire
    # decoder either declines or agrees with protobuf (test_wire.envoy_answer), and takes a share.
    from hypothesis import strategies as st
    from test_wire import count_answers, damaged, parsed_or_none

    limits = Limits()

    def answer(data: bytes) -> str:
        view = decode_envoy_check(data, limits.max_headers)
        message = parsed_or_none(ea.CheckRequest, data)
        if view is None:
            return "declined" if message is not None else "refused"
        assert message is not None, "accepted bytes that protobuf rejects"
        reference = check_view(message, limits)
        assert view[:6] + view[7:] == reference[:6] + reference[7:] and view[6] >= reference[6]
        return "accepted"

    whole = [envoy_request(headers=h).SerializeToString()
             for h in ({}, {"mcp-method": "tools/call", "mcp-name": "search", "mcp-param-x": "1"})]
    answers = count_answers(st.sampled_from(whole).flatmap(damaged), answer, examples=300)
    # Most damage breaks the message for protobuf too; of what it still reads, the decoder takes most.
    assert answers["accepted"] >= 300 // 10 and answers["accepted"] >= 3 * answers["declined"], answers


def test_headers_alone_map_a_tool_call():
    [r] = mapped(envoy_request(headers={"mcp-method": "tools/call", "mcp-name": "search",
                                        "mcp-param-region": "eu"}))
    assert r["action"] == {"type": "Action", "id": "tools/call"}
    assert r["resource"] == {"type": "Tool", "id": "search"}
    # No `arguments`: without the body they are not known (policies guard with `context.mcp has arguments`).
    assert r["context"]["mcp"] == {"method": "tools/call", "name": "search", "tool": "search",
                                   "param_headers": {"region": "eu"}}
    assert r["context"]["http"]["headers"]["mcp-name"] == "search"


def test_headers_alone_map_other_methods_and_keep_the_route():
    [r] = mapped(envoy_request(headers={"mcp-method": "initialize"}))
    assert (r["action"]["id"], r["resource"]) == ("initialize", {"type": "Route", "id": "/mcp"})
    assert r["context"]["mcp"] == {"method": "initialize", "param_headers": {}}
    [r] = mapped(envoy_request(headers={"mcp-method": "resources/read", "mcp-name": "file:///a b"}))
    assert r["context"]["mcp"]["name"] == "file:///a b" and r["resource"]["type"] == "Route"


def test_route_overrides_still_win_over_mcp_headers():
    ext = {"authz.action": 'Action::"operate"', "authz.resource": 'Console::"ops"'}
    [r] = mapped(envoy_request(headers={"mcp-method": "tools/call", "mcp-name": "search"}, ext=ext))
    assert (r["action"]["id"], r["resource"]) == ("operate", {"type": "Console", "id": "ops"})
    assert r["context"]["mcp"]["tool"] == "search"


def test_headers_that_agree_with_the_body():
    call = rpc("tools/call", {"name": "search", "arguments": {"query": "cedar"}})
    [with_headers] = mapped(envoy_request(headers={"mcp-method": "tools/call", "mcp-name": "search",
                                                   "mcp-param-q": "cedar"}, body=call))
    [body_only] = mapped(envoy_request(body=call))
    assert with_headers["context"]["mcp"] == {**body_only["context"]["mcp"], "param_headers": {"q": "cedar"}}
    assert body_only["context"]["mcp"] == {"method": "tools/call", "name": "search", "tool": "search",
                                           "arguments": {"query": "cedar"}, "param_headers": {}}
    # The name is compared decoded; resources/read names its uri.
    mapped(envoy_request(headers={"mcp-method": "tools/call", "mcp-name": b64("search")}, body=call))
    read = rpc("resources/read", {"uri": "file:///x"})
    [r] = mapped(envoy_request(headers={"mcp-method": "resources/read", "mcp-name": "file:///x"}, body=read))
    assert r["context"]["mcp"]["name"] == "file:///x"
    # A header missing is not a disagreement (clients before 2026-07-28 send none).
    mapped(envoy_request(headers={"mcp-method": "tools/call"}, body=call))
    mapped(envoy_request(headers={"mcp-name": "search"}, body=call))


@pytest.mark.parametrize("headers, body", [
    ({"mcp-method": "tools/list"}, rpc("tools/call", {"name": "search"})),
    ({"mcp-method": "tools/call", "mcp-name": "search"}, rpc("tools/call", {"name": "rm"})),
    ({"mcp-name": "search"}, rpc("tools/call", {"name": "rm"})),
    ({"mcp-method": "tools/call", "mcp-name": b64("rm")}, rpc("tools/call", {"name": "search"})),
    ({"mcp-method": "initialize", "mcp-name": "x"}, rpc("initialize", {})),
    ({"mcp-method": "resources/read", "mcp-name": "file:///x"}, rpc("resources/read", {"uri": "file:///y"})),
    ({"mcp-method": "tools/call", "mcp-name": "search"},
     [rpc("tools/call", {"name": "search"}), rpc("tools/call", {"name": "rm"}, 2)]),
    ({"mcp-method": "tools/call", "mcp-name": "search"}, [rpc("tools/call", {"name": "search"}), {"id": 2, "result": {}}]),
    ({"mcp-method": "tools/call", "mcp-name": "search"}, {"jsonrpc": "2.0", "id": 1, "result": {}}),
    ({"mcp-method": "tools/call", "mcp-name": "search"}, {"name": "search"}),
])
def test_headers_that_disagree_with_the_body_are_denied(headers, body):
    assert refused(envoy_request(headers=headers, body=body)) == "mcp_header_mismatch"


def test_param_headers_are_decoded_and_bounded():
    headers = {"mcp-method": "tools/call", "mcp-name": "db", "mcp-param-region": b64("eu-west 1"),
               "mcp-param-tenant": "acme", "mcp-param-literal": "=?base64?", "mcp-param-unicode": b64("é ")}
    [r] = mapped(envoy_request(headers=headers))
    assert r["context"]["mcp"]["param_headers"] == {"region": "eu-west 1", "tenant": "acme", "literal": "=?base64?",
                                                    "unicode": "é "}
    many = {f"mcp-param-p{i}": "v" for i in range(33)}
    assert refused(envoy_request(headers={"mcp-method": "tools/call", "mcp-name": "db", **many})) == "request_too_large"
    [r] = mapped(envoy_request(headers={"mcp-method": "tools/call", "mcp-name": "db", **dict(list(many.items())[:32])}))
    assert len(r["context"]["mcp"]["param_headers"]) == 32
    long_value = {"mcp-method": "tools/call", "mcp-name": "db", "mcp-param-x": "v" * 4097}
    assert refused(envoy_request(headers=long_value)) == "request_too_large"
    assert refused(envoy_request(headers={"mcp-method": "x" * 5000})) == "request_too_large"


@pytest.mark.parametrize("headers", [
    {"mcp-method": "tools/call"},                                           # tools/call names no tool
    {"mcp-method": "tools/call", "mcp-name": ""},
    {"mcp-method": ""},
    {"mcp-method": "tools/call", "mcp-name": "=?base64?!!!?="},               # not base64
    {"mcp-method": "tools/call", "mcp-name": "=?base64?" + base64.b64encode(b"\xff").decode() + "?="},  # not UTF-8
    {"mcp-method": "tools/call", "mcp-name": "sé"},                          # not ASCII: must be encoded
    {"mcp-method": "tools/call", "mcp-name": "a\x01b"},                      # a control character
    {"mcp-method": "tools/call", "mcp-name": "db", "mcp-param-": "v"},       # a parameter without a name
    {"mcp-method": "tools/call", "mcp-name": "db", "mcp-param-x": "=?base64?e?="},
])
def test_malformed_mcp_headers_are_denied(headers):
    assert refused(envoy_request(headers=headers)) == "request_parse_error"


def test_non_utf8_raw_header_values_are_denied():
    # encode_raw_headers: the bytes as sent; not UTF-8 becomes U+FFFD in context.http.headers, and
    # an MCP header holding it is refused rather than compared or decided.
    req = envoy_request(raw_headers={":method": b"POST", ":path": b"/mcp", "mcp-method": b"tools/call",
                                     "mcp-name": b"se\xffarch"})
    assert refused(req) == "request_parse_error"
    req = envoy_request(raw_headers={":method": b"POST", ":path": b"/mcp", "mcp-method": b"tools/call",
                                     "mcp-name": b"search", "mcp-param-q": b"\xc3("})
    assert refused(req) == "request_parse_error"
    req = envoy_request(raw_headers={":method": b"POST", ":path": b"/mcp", "mcp-method": b"tools/call",
                                     "Mcp-Name": b"search"})
    [r] = mapped(req)
    assert r["resource"] == {"type": "Tool", "id": "search"}


def test_a_huge_header_is_denied_before_mapping():
    assert refused(envoy_request(headers={"mcp-method": "tools/call", "mcp-name": "db",
                                          "mcp-param-x": "v" * 70_000})) == "request_too_large"


# -- in process: the servicer answers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def servicer(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp-db")
    (root / "p.cedar").write_text(POLICIES)
    authz.compile([str(root / "p.cedar")], db=str(root / "db"))
    decider = Decider(str(root / "db"))
    assert decider.open_engine()
    return EnvoyAuthorizationServicer(decider, Limits())


def answer(servicer, req):
    """(allowed, reason) of the servicer's serialized CheckResponse."""
    resp = ea.CheckResponse.FromString(servicer.check(req.SerializeToString()))
    if resp.status.code == 0:
        return True, ""
    return False, json.loads(resp.denied_response.body)["reason"]


def test_the_servicer_decides_from_headers_and_denies_a_mismatch(servicer):
    def call(name, **kw):
        return envoy_request(headers={"mcp-method": "tools/call", "mcp-name": name, **kw.pop("headers", {})}, **kw)

    assert answer(servicer, call("search")) == (True, "")
    assert answer(servicer, call("shell")) == (False, "no_permitting_policy")
    assert answer(servicer, call("rm")) == (False, "forbidden_by_policy")
    assert answer(servicer, call("db", headers={"mcp-param-region": b64("eu-west 1")})) == (True, "")
    assert answer(servicer, call("db", headers={"mcp-param-region": "us"})) == (False, "no_permitting_policy")
    assert answer(servicer, call("search", body=rpc("tools/call", {"name": "rm"}))) == (False, "mcp_header_mismatch")
    assert answer(servicer, call("search", body=rpc("tools/call", {"name": "search", "arguments": {
        "query": "forbidden"}}))) == (False, "no_permitting_policy")
    assert answer(servicer, envoy_request(headers={"mcp-method": "initialize"})) == (True, "")


# -- through a real Envoy --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp-e2e")
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "policies.cedar").write_text(POLICIES)
    server = AuthzServer(tmp, ["--listen", "127.0.0.1:0", "--policies", str(pol), "--data-dir", str(tmp / "data")])
    server.start()
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with EchoUpstream() as upstream, Envoy(tmp, port, upstream.port) as envoy:
            yield server, envoy
    finally:
        server.stop()


def _raw_request(port: int, head: bytes) -> int:
    """The HTTP status Envoy answers to a request written byte for byte (bodyless POST)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_through_envoy(stack):
    server, envoy = stack

    def post(headers, body=b""):
        status, _, data = envoy.request("POST", "/mcp", headers, body if isinstance(body, bytes) else json.dumps(
            body).encode())
        return status, (json.loads(data).get("reason") if status == 403 else "")

    mcp = {"mcp-method": "tools/call", "mcp-name": "search"}
    json_type = {"content-type": "application/json"}
    # Headers alone decide (no body).
    assert post(mcp) == (200, "")
    assert post({**mcp, "mcp-name": "shell"}) == (403, "no_permitting_policy")
    assert post({"mcp-method": "initialize"}) == (200, "")
    assert post({**mcp, "mcp-name": "db", "mcp-param-region": b64("eu-west 1")}) == (200, "")
    assert post({**mcp, "mcp-name": "db", "Mcp-Param-Region": "us"}) == (403, "no_permitting_policy")
    # With the body too: they must agree.
    assert post({**mcp, **json_type}, rpc("tools/call", {"name": "search"})) == (200, "")
    assert post({**mcp, **json_type}, rpc("tools/call", {"name": "rm"})) == (403, "mcp_header_mismatch")
    assert post({**mcp, "mcp-method": "tools/list", **json_type}, rpc("tools/call", {"name": "search"})) == (
        403, "mcp_header_mismatch")
    assert post({**mcp, **json_type}, rpc("tools/call", {"name": "search", "arguments": {"query": "forbidden"}})) == (
        403, "no_permitting_policy")
    # Bad input: many parameters, a long one, a malformed one.
    assert post({**mcp, **{f"mcp-param-p{i}": "v" for i in range(40)}}) == (403, "request_too_large")
    assert post({**mcp, "mcp-param-x": "v" * 5000}) == (403, "request_too_large")
    assert post({**mcp, "mcp-name": "=?base64?***?="}) == (403, "request_parse_error")
    # A header value that is not UTF-8 (obs-text): Envoy's `headers` map carries it with `!` for each
    # bad byte, so the tool is `se!arch`, which no policy names (encode_raw_headers: refused, above).
    head = (b"POST /mcp HTTP/1.1\r\nHost: api\r\nMcp-Method: tools/call\r\nMcp-Name: se\xffarch\r\n"
            b"Content-Length: 0\r\n\r\n")
    assert _raw_request(envoy.listen_port, head) == 403
    # A header past Envoy's own limit (60 KiB) never reaches authz.
    assert post({**mcp, "mcp-param-x": "v" * 70_000})[0] == 431

    log_path = server.tmp / "data" / "decisions.jsonl"
    server.stop()
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert any(e["action"] == 'Action::"tools/call"' and e["resource"] == 'Tool::"search"' and
               e["decision"] == "allow" for e in events)
    assert any(e.get("reason") == "mcp_header_mismatch" for e in events)
    assert any(e["resource"] == 'Tool::"se!arch"' and e["decision"] == "deny" for e in events)


def test_denies_are_rendered_from_templates_byte_for_byte():
    # The servicer renders denies from per-reason templates (mcp_header_mismatch among them); each
    # must be exactly what protobuf writes for the same deny, and the odd ones take protobuf's path.
    from authz.server.envoy import _DenyTemplates, deny_response

    templates = _DenyTemplates(22)
    did = "0123456789abcdef012345"
    for reason in ("no_permitting_policy", "forbidden_by_policy", "mcp_header_mismatch", "request_parse_error",
                   "request_too_large", "a#reason", "#" * 22, "", "no_permitting_policy"):
        assert templates.render(did, reason) == deny_response(did, reason).SerializeToString()
    assert templates.render(did, "approval_required", "ap-1", "ops") == deny_response(
        did, "approval_required", "ap-1", "ops").SerializeToString()
    assert templates.render("short", "no_permitting_policy") == deny_response(
        "short", "no_permitting_policy").SerializeToString()
    assert templates._parts["#" * 22] == ()  # the marker itself in the reason: not templated
    for n in range(_DenyTemplates.MAX_REASONS + 5):
        assert templates.render(did, f"r{n}") == deny_response(did, f"r{n}").SerializeToString()
    assert len(templates._parts) == _DenyTemplates.MAX_REASONS
