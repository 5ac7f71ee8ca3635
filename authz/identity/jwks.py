"""Key sets for JWT verification: JWKS and SPIFFE bundle files (reloaded when they change, never fetched), or static JWKS.

A key set maps a `kid` to a public key and the JWS algorithms that key may verify. Files are
read at start and re-read on the request path at most once per `check_interval_s` when their
modification time, size or inode changed: one `stat` call, never a network fetch.
"""
from __future__ import annotations

import json
import logging
import os
import time

from authz.errors import IdentityError

log = logging.getLogger("authz.identity")

# The algorithms a token may name, by key family: (kty, crv or None for RSA).
ALGORITHM_KEYS = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None), "PS256": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "EdDSA": ("OKP", "Ed25519"),
}
ALGORITHMS = tuple(ALGORITHM_KEYS)
MAX_JWKS_BYTES = 1024 * 1024
MAX_KEYS = 1000
MAX_KID_CHARS = 256
MIN_RSA_BITS = 2048
JWKS_INVALID = "jwks_invalid"
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class Key:
    """A public verification key: its kid, family, the algorithms it may verify, the cryptography key object."""

    __slots__ = ("kid", "kty", "crv", "algorithms", "public_key")

    def __init__(self, kid: str, kty: str, crv, algorithms: frozenset, public_key):
        self.kid, self.kty, self.crv, self.algorithms, self.public_key = kid, kty, crv, algorithms, public_key

    def __repr__(self) -> str:
        return f"Key(kid={self.kid!r}, kty={self.kty!r}, algorithms={sorted(self.algorithms)})"


def _key_from_jwk(jwk: dict, where: str) -> Key | None:
    """One JWK as a Key, or None (logged) when it is not usable for signature verification."""
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        log.warning("%s: a key without a usable `kid` is ignored", where)
        return None
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        log.warning("%s: key `%s` holds private or symmetric key material and is ignored", where, kid)
        return None
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if alg is not None and alg not in ALGORITHM_KEYS:
        log.warning("%s: key `%s` has algorithm `%s`, which is not allowed; ignored", where, kid, str(alg)[:32])
        return None
    try:
        if kty == "RSA":
            public_key = RSAAlgorithm.from_jwk(jwk)
            if public_key.key_size < MIN_RSA_BITS:
                log.warning("%s: RSA key `%s` has %d bits (< %d); ignored", where, kid, public_key.key_size, MIN_RSA_BITS)
                return None
            crv = None
        elif kty == "EC" and crv in ("P-256", "P-384"):
            public_key = ECAlgorithm.from_jwk(jwk)
        elif kty == "OKP" and crv == "Ed25519":
            public_key = OKPAlgorithm.from_jwk(jwk)
        else:
            log.warning("%s: key `%s` has an unsupported type `%s`/`%s`; ignored", where, kid, str(kty)[:16], str(crv)[:16])
            return None
    except Exception as e:  # InvalidKeyError, ValueError, TypeError from malformed members
        log.warning("%s: key `%s` cannot be read (%s); ignored", where, kid, type(e).__name__)
        return None
    usable = frozenset(a for a, family in ALGORITHM_KEYS.items() if family == (kty, crv))
    if alg is not None:
        # INVARIANT: a key that names its algorithm verifies that algorithm only (no key confusion).
        usable = usable & {alg}
        if not usable:
            log.warning("%s: key `%s` names algorithm `%s`, which does not fit a %s key; ignored", where, kid, alg, kty)
            return None
    return Key(kid, kty, crv, usable, public_key)


def _reject_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate member `{k[:64]}`")
        out[k] = v
    return out


def parse_jwks(data: bytes, where: str = "jwks", spiffe: bool | None = None, trust_domain: str = "") -> dict:
    """A JWKS or SPIFFE bundle document as {kid: Key}; IdentityError `jwks_invalid` when the document is unusable.

    `spiffe`: True = a SPIFFE bundle (only `use: jwt-svid` keys count), False = a JWKS (keys
    with `use` absent or `sig`), None = decide from the document (`spiffe_sequence` or a
    `jwt-svid`/`x509-svid` key make it a bundle). A bundle map (`{"trust_domains": {...}}`)
    gives the bundle of `trust_domain`. Unusable keys are skipped and logged; a duplicated
    `kid` makes the document invalid.
    """
    if len(data) > MAX_JWKS_BYTES:
        raise IdentityError(JWKS_INVALID, f"{where}: larger than {MAX_JWKS_BYTES} bytes")
    try:
        doc = json.loads(data, object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise IdentityError(JWKS_INVALID, f"{where}: not a JSON document: {str(e)[:200]}") from None
    if isinstance(doc, dict) and "trust_domains" in doc and "keys" not in doc:
        bundles = doc["trust_domains"]
        if not isinstance(bundles, dict) or trust_domain not in bundles:
            raise IdentityError(JWKS_INVALID, f"{where}: the bundle map has no bundle for `{trust_domain}`")
        doc, spiffe = bundles[trust_domain], True
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise IdentityError(JWKS_INVALID, f"{where}: a JWKS needs a `keys` array")
    keys = doc["keys"]
    if len(keys) > MAX_KEYS:
        raise IdentityError(JWKS_INVALID, f"{where}: more than {MAX_KEYS} keys")
    if spiffe is None:
        spiffe = "spiffe_sequence" in doc or any(
            isinstance(k, dict) and k.get("use") in ("jwt-svid", "x509-svid") for k in keys)
    out: dict = {}
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise IdentityError(JWKS_INVALID, f"{where}: every member of `keys` must be an object")
        use = jwk.get("use")
        if spiffe and use != "jwt-svid":
            continue  # x509-svid authorities and unknown uses are not JWT keys (SPIFFE bundle format)
        if not spiffe and use not in (None, "sig"):
            continue
        key = _key_from_jwk(jwk, where)
        if key is None:
            continue
        if key.kid in out:
            raise IdentityError(JWKS_INVALID, f"{where}: `kid` `{key.kid}` appears twice")
        out[key.kid] = key
    return out


class KeySet:
    """Keys by kid. `version` changes whenever the keys do (verified-token caches compare it)."""

    version = 0

    def get(self, kid: str) -> Key | None:
        """The key with this kid, or None."""
        raise NotImplementedError

    def current_version(self) -> int:
        """The version after any due reload."""
        return self.version


class StaticKeySet(KeySet):
    """Keys from a JWKS document in memory (or a {kid: Key} mapping)."""

    def __init__(self, jwks, spiffe: bool | None = None):
        if isinstance(jwks, dict) and all(isinstance(v, Key) for v in jwks.values()) and "keys" not in jwks:
            self._keys = dict(jwks)
        else:
            data = jwks if isinstance(jwks, (bytes, str)) else json.dumps(jwks)
            self._keys = parse_jwks(data.encode() if isinstance(data, str) else data, "static key set", spiffe)

    def get(self, kid: str) -> Key | None:
        return self._keys.get(kid)

    def kids(self) -> list:
        return sorted(self._keys)


class FileKeySet(KeySet):
    """Keys from a JWKS or SPIFFE bundle file, re-read when it changes (checked at most every `check_interval_s`).

    The first read happens in the constructor and raises IdentityError `jwks_invalid`, so a
    bad file stops the server at start. A later unreadable or invalid version is logged and
    the previous keys stay in force until a valid version appears (replace the file
    atomically, e.g. write then rename).
    """

    def __init__(self, path: str, spiffe: bool | None = None, trust_domain: str = "",
                 check_interval_s: float = 1.0, clock=time.monotonic):
        self.path, self.spiffe, self.trust_domain = str(path), spiffe, trust_domain
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._keys: dict = {}
        self.version = 0
        self._stamp = None
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise IdentityError(JWKS_INVALID, f"cannot read key set `{self.path}`: {e.strerror}") from None
        self._load(st)
        self._checked = clock()

    def _read(self) -> bytes:
        with open(self.path, "rb") as f:
            data = f.read(MAX_JWKS_BYTES + 1)
        return data

    def _load(self, st) -> None:
        try:
            data = self._read()
        except OSError as e:
            raise IdentityError(JWKS_INVALID, f"cannot read key set `{self.path}`: {e.strerror}") from None
        self._keys = parse_jwks(data, self.path, self.spiffe, self.trust_domain)
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        self.version += 1
        if self._keys:
            log.info("key set `%s`: %d keys (%s)", self.path, len(self._keys), ", ".join(sorted(self._keys)[:20]))
        else:
            log.warning("key set `%s` has no usable key: every token of its issuer is refused", self.path)

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if it changed and the check interval has passed (or `force`)."""
        now = self._clock()
        if not force and now - self._checked < self.check_interval_s:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError as e:
            if self._stamp is not None:
                log.error("key set `%s` cannot be read (%s); keeping its previous %d keys",
                          self.path, e.strerror, len(self._keys))
                self._stamp = None
            return
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._stamp:
            return
        try:
            self._load(st)
        except IdentityError as e:
            log.error("%s; keeping the previous %d keys", e, len(self._keys))
            self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # re-read on its next change only

    def get(self, kid: str) -> Key | None:
        self.refresh()
        return self._keys.get(kid)

    def current_version(self) -> int:
        self.refresh()
        return self.version

    def kids(self) -> list:
        return sorted(self._keys)
