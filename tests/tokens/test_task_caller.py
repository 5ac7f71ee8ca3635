"""caller_identity: the identity layer's resolver decides alone; else the mTLS SPIFFE peer; `x-authz-caller` only in development mode."""
import pytest

from authz.tokens import caller


class Ctx:
    def __init__(self, metadata=(), auth=None):
        self.metadata, self.auth = metadata, auth or {}

    def invocation_metadata(self):
        return self.metadata

    def auth_context(self):
        return self.auth


@pytest.fixture(autouse=True)
def reset():
    yield
    caller.configure(False, None)


def test_development_mode_believes_the_header():
    caller.configure(True)
    assert caller.caller_identity(Ctx([("x-authz-caller", "a1")])) == "a1"
    assert caller.caller_identity(Ctx([("x-authz-caller", "a1"), ("x-authz-caller", "a2")])) is None
    assert caller.caller_identity(Ctx([("x-authz-caller", "x" * 300)])) is None
    assert caller.caller_identity(Ctx([("x-authz-caller", "bad\nname")])) is None
    assert caller.caller_identity(Ctx()) is None


def test_outside_development_mode_the_header_is_ignored():
    caller.configure(False)
    assert caller.caller_identity(Ctx([("x-authz-caller", "a1")])) is None
    peer = {"peer_spiffe_id": [b"spiffe://example.org/agent/a1"]}
    assert caller.caller_identity(Ctx([("x-authz-caller", "a2")], peer)) == "spiffe://example.org/agent/a1"
    assert caller.caller_identity(Ctx(auth={"peer_spiffe_id": [b"https://not-spiffe"]})) is None


def test_a_resolver_decides_alone():
    peer = {"peer_spiffe_id": [b"spiffe://untrusted.example/agent/x"]}
    caller.configure(False, lambda ctx: None)  # e.g. the peer's trust domain is not allowed
    assert caller.caller_identity(Ctx(auth=peer)) is None
    caller.configure(False, lambda ctx: "spiffe://example.org/agent/ok")
    assert caller.caller_identity(Ctx(auth=peer)) == "spiffe://example.org/agent/ok"

    def broken(ctx):
        raise RuntimeError("boom")

    caller.configure(True, broken)
    assert caller.caller_identity(Ctx([("x-authz-caller", "a1")])) is None
