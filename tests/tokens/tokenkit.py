"""Helpers for the task-token tests: an index, a settable clock, the token machinery, a token forger, a small
file system that fills up."""
import errno
import os
import pathlib
import subprocess
import sys
import time

import jwt
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "server"))  # harness.py

import authz  # noqa: E402
from authz.tokens.config import TokenConfig  # noqa: E402
from authz.tokens.issuer import Authorization, Issuer  # noqa: E402
from authz.tokens.keys import KeyStore, ensure_keys  # noqa: E402
from authz.tokens.revocation import RevocationStore  # noqa: E402
from authz.tokens.verify import TOKEN_TYPE, Verifier  # noqa: E402

POLICY = 'permit(principal, action, resource);\n'


class Clock:
    """A settable time.time()."""

    def __init__(self, now=None):
        self.now = float(int(time.time()) if now is None else now)

    def __call__(self):
        return self.now


def allow(request):
    return Authorization(True, "test-decision")


class Kit:
    """Keys, revocations, verifier and issuer over one data folder, all on one fake clock."""

    def __init__(self, data_dir, db, clock, **cfg):
        self.data_dir, self.db, self.clock = str(data_dir), str(db), clock
        self.cfg = TokenConfig.from_dict(cfg)
        ensure_keys(self.data_dir, self.cfg.max_ttl_s, clock())
        self.keys = KeyStore(self.data_dir, 0.0, clock)
        self.revocations = RevocationStore(self.db, clock)
        self.verifier = Verifier(self.cfg, self.keys, self.revocations, clock)
        self.issuer = Issuer(self.cfg, self.keys, self.verifier, clock)

    def issue(self, caller="a1", task="t1", actions=('Action::"call"',), resources=('Tool::"*"',), ttl=60,
              may_act=(), authorize=allow):
        return self.issuer.issue(caller, task, list(actions), list(resources), ttl, list(may_act), authorize)

    def exchange(self, actor, parent, actions=(), resources=(), ttl=0, may_act=(), authorize=allow):
        return self.issuer.exchange(actor, parent.token, list(actions), list(resources), ttl, list(may_act),
                                    authorize)


def make_index(folder: pathlib.Path, policy: str = POLICY) -> str:
    src = folder / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "p.cedar").write_text(policy)
    db = str(folder / "authz.lmdb")
    authz.compile([str(src)], db=db)
    return db


def forge(data_dir: str, claims: dict, kid: str | None = None, typ: str = TOKEN_TYPE, key=None) -> str:
    """A token signed with the data folder's active key (or `key`), with exactly these claims."""
    store = KeyStore(str(data_dir))
    active, private = store.signing_key()
    return jwt.encode(claims, key or private, algorithm="EdDSA", headers={"kid": kid or active, "typ": typ})


def claims_for(now: float, **over) -> dict:
    now = int(now)
    c = {"iss": "authz", "aud": "authz", "sub": "a1", "task": "t1", "jti": "j-" + str(now),
         "scope": {"actions": ['Action::"call"'], "resources": ['Tool::"*"']}, "iat": now, "nbf": now,
         "exp": now + 60}
    c.update(over)
    return c


def mount_small_fs(folder: pathlib.Path, size: str) -> None:
    """Mount a tmpfs of `size` at `folder`: a real file system that fills up (needs root; skips otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")


def unmount(folder: pathlib.Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def fill(folder: pathlib.Path) -> pathlib.Path:
    """Write a file in `folder` until its file system is full; returns the file (remove it to free the space)."""
    path = folder / "filler"
    block = b"\0" * 4096
    with open(path, "wb", buffering=0) as f:
        for _ in range(1 << 20):  # bounded: at most 4 GiB
            try:
                if f.write(block) < len(block):
                    break
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return path
