"""User-facing messages name values in Cedar/JSON/TOML terms (`null`, `true`, `"3"`, `an array of strings`),
never as Python writes them (`None`, `True`, `'3'`, `NoneType`, `float`, `dict`, `list`)."""

import re

import pytest

from authz.errors import CompileError

# Python type names and constants, and a string quoted as Python's repr quotes it.
PYTHONISMS = re.compile(r"\b(None|True|False|NoneType|float|dict|list|int|str|tuple)\b|(^|[\s(\[{:,])'")


def _clean(message):
    assert not PYTHONISMS.search(message), message
    return message


@pytest.mark.parametrize(("toml", "expected"), [
    ('[server]\nworkers = "3"\n', '`workers` must be a positive integer, not "3"'),
    ("[server]\nworkers = true\n", "`workers` must be a positive integer, not true"),
    ("[server]\ndecision_log_keep = [1]\n", "`decision_log_keep` must be an integer from 0 to 1000, not [1]"),
    ("[server]\nlisten = 1979-05-27\n", "`listen` must be a string, not 1979-05-27"),
    ('[server]\ndrain_s = "x"\n', '`drain_s` must be a number >= 0, not "x"'),
    ('[[identity.jwt]]\nissuer = "i"\naudiences = [1]\njwks_file = "k.json"\n',
     "`identity.jwt[0].audiences` must be a non-empty array of strings"),
])
def test_server_config_messages(tmp_path, toml, expected):
    from authz.server.config import ConfigError, load_config

    (tmp_path / "c.toml").write_text(toml)
    (tmp_path / "k.json").write_text('{"keys": []}')
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "c.toml"), {})
    assert _clean(str(err.value)) == expected


@pytest.mark.parametrize(("table", "expected"), [
    ({"issuer": None}, "`tokens.issuer` must be a string, not null"),
    ({"max_ttl_s": "x"}, '`tokens.max_ttl_s` must be a positive integer, not "x"'),
    ({"key_check_interval_s": False}, "`tokens.key_check_interval_s` must be a positive number, not false"),
])
def test_tokens_config_messages(table, expected):
    from authz.tokens.config import TokenConfig, TokenConfigError

    with pytest.raises(TokenConfigError) as err:
        TokenConfig.from_dict(table)
    assert _clean(str(err.value)) == expected


@pytest.mark.parametrize(("number", "expected"), [
    (1.5, "`context.x`: 1.5 is a number with a fraction; Cedar numbers are 64-bit integers"),
    (1e20, "`context.x`: 100000000000000000000 is outside Cedar's 64-bit integer range"),
    (float("inf"), "`context.x`: Infinity is not a Cedar value"),
])
def test_grpc_context_number_messages(number, expected):
    pytest.importorskip("google.protobuf")
    from google.protobuf import struct_pb2

    from authz.errors import RequestError
    from authz.server.records import from_struct

    struct = struct_pb2.Struct()
    struct["x"] = number
    with pytest.raises(RequestError) as err:
        from_struct(struct, 4, "context")
    assert _clean(str(err.value)) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (None, "not a Cedar value: null"),
    (1.5, "not a Cedar value: 1.5"),
    ({"__extn": {"fn": "nope", "arg": "x"}}, 'unsupported extension value {"__extn": {"fn": "nope", "arg": "x"}}'),
])
def test_compiler_value_messages(value, expected):
    from authz.compiler.encode import Symbols, encode_value

    with pytest.raises(CompileError) as err:
        encode_value(bytearray(), value, Symbols())
    assert err.value.diagnostics == [expected]


def test_value_kinds():
    from authz.jsonterms import kind

    assert [kind(v) for v in (None, True, 1, 1.5, "s", [], {})] == [
        "null", "a boolean", "an integer", "a number with a fraction or exponent", "a string", "a set (JSON array)",
        "a record (JSON object)"]
