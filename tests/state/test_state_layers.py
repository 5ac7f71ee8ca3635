"""Layers: the state package imports no grpc, server or HTTP code, and the engine never imports the state package."""
import subprocess
import sys


def _modules_after(statement: str) -> set:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_the_state_package_imports_no_server_grpc_or_http():
    loaded = _modules_after("import authz.state")
    assert "authz.state.lmdb_store" in loaded
    bad = {m for m in loaded if m.split(".")[0] in ("grpc", "aiohttp", "starlette", "uvicorn", "h11", "httpx")
           or m.startswith(("authz.server", "authz.http", "authz.cli"))}
    assert not bad


def test_the_engine_never_imports_the_state_package():
    loaded = _modules_after("import authz\nauthz.Engine")
    assert "authz.engine" in loaded and not {m for m in loaded if m.startswith("authz.state")}
