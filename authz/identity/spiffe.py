"""SPIFFE ids: parsing and validation (SPIFFE-ID spec), and a peer X.509 certificate's SPIFFE id (X509-SVID rules)."""
from __future__ import annotations

import re

from authz.errors import IdentityError

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

# Reason codes (stable; also used by jwt.py).
SPIFFE_ID_INVALID = "spiffe_id_invalid"
UNTRUSTED_TRUST_DOMAIN = "untrusted_trust_domain"
PEER_CERT_INVALID = "peer_cert_invalid"
PEER_CERT_MULTIPLE_URIS = "peer_cert_multiple_uris"
PEER_CERT_NOT_SPIFFE = "peer_cert_not_spiffe"

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeId:
    """A valid SPIFFE id: `spiffe://<trust_domain><path>`; `path` is "" or starts with "/"."""

    __slots__ = ("trust_domain", "path", "_text")

    def __init__(self, trust_domain: str, path: str):
        self.trust_domain, self.path = trust_domain, path
        self._text = f"{SCHEME_PREFIX}{trust_domain}{path}"

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"SpiffeId({self._text!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, SpiffeId) and other._text == self._text

    def __hash__(self) -> int:
        return hash(self._text)


def _show(text: str, limit: int = 80) -> str:
    """User input for a message, bounded."""
    return text if len(text) <= limit else text[:limit] + "..."


def is_trust_domain_name(text) -> bool:
    """True for a valid trust domain name: lowercase letters, digits, `.`, `-`, `_`; at most 255 bytes."""
    return isinstance(text, str) and 0 < len(text) <= MAX_TRUST_DOMAIN_BYTES and _TRUST_DOMAIN.fullmatch(text) is not None


def parse_spiffe_id(text, require_path: bool = False) -> SpiffeId:
    """Parse and validate a SPIFFE id; `require_path` demands a non-root path (leaf SVIDs).

    Raises IdentityError `spiffe_id_invalid`. Rules (SPIFFE-ID spec): scheme `spiffe`, a
    lowercase trust domain of `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]` that are
    neither empty, `.` nor `..`, no trailing `/`, no query, fragment, port, userinfo or
    percent-encoding, at most 2048 bytes in all.
    """
    if not isinstance(text, str):
        raise IdentityError(SPIFFE_ID_INVALID, "a SPIFFE id must be a string")
    if len(text) > MAX_ID_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise IdentityError(SPIFFE_ID_INVALID, f"SPIFFE id longer than {MAX_ID_BYTES} bytes")
    if not text.startswith(SCHEME_PREFIX):
        raise IdentityError(SPIFFE_ID_INVALID, f"`{_show(text)}` is not a SPIFFE id: the scheme must be `spiffe`")
    rest = text[len(SCHEME_PREFIX):]
    slash = rest.find("/")
    trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if not trust_domain:
        raise IdentityError(SPIFFE_ID_INVALID, f"`{_show(text)}` has no trust domain")
    if not is_trust_domain_name(trust_domain):
        raise IdentityError(SPIFFE_ID_INVALID,
                            f"`{_show(text)}`: the trust domain may hold only lowercase letters, digits, `.`, `-` "
                            f"and `_`, at most {MAX_TRUST_DOMAIN_BYTES} bytes")
    if path:
        for segment in path[1:].split("/"):
            if not segment:
                raise IdentityError(SPIFFE_ID_INVALID, f"`{_show(text)}`: empty path segment or trailing `/`")
            if segment in (".", ".."):
                raise IdentityError(SPIFFE_ID_INVALID, f"`{_show(text)}`: `.` and `..` are not allowed path segments")
            if _SEGMENT.fullmatch(segment) is None:
                raise IdentityError(SPIFFE_ID_INVALID,
                                    f"`{_show(text)}`: path segments may hold only letters, digits, `.`, `-` and `_`")
    elif require_path:
        raise IdentityError(SPIFFE_ID_INVALID, f"`{_show(text)}` names a trust domain, not a workload (no path)")
    return SpiffeId(trust_domain, path)


def load_certificate(cert):
    """An x509.Certificate from one, or from PEM or DER bytes/str; IdentityError `peer_cert_invalid` otherwise."""
    from cryptography import x509

    if isinstance(cert, x509.Certificate):
        return cert
    if isinstance(cert, str):
        cert = cert.encode("ascii", "replace")
    if not isinstance(cert, (bytes, bytearray, memoryview)) or not cert:
        raise IdentityError(PEER_CERT_INVALID, "no peer certificate")
    data = bytes(cert)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise IdentityError(PEER_CERT_INVALID, "the peer certificate cannot be parsed") from None


def spiffe_id_from_certificate(cert, trust_domains) -> SpiffeId:
    """The SPIFFE id of an X.509-SVID leaf (x509.Certificate, PEM or DER), checked against `trust_domains`.

    X509-SVID rules: exactly one URI SAN (`peer_cert_multiple_uris` for two or more), that is
    a SPIFFE id with a workload path (`peer_cert_not_spiffe` otherwise), not a CA certificate
    and not allowed to sign certificates (`peer_cert_invalid`), and its trust domain in
    `trust_domains` (`untrusted_trust_domain`). The chain itself is checked by the TLS layer.
    """
    from cryptography import x509

    cert = load_certificate(cert)
    try:
        extensions = cert.extensions
    except ValueError:  # a malformed or duplicated extension
        raise IdentityError(PEER_CERT_INVALID, "the peer certificate has malformed extensions") from None
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise IdentityError(PEER_CERT_INVALID, "the peer certificate is a CA certificate, not a leaf SVID")
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and (usage.key_cert_sign or usage.crl_sign or not usage.digital_signature):
        raise IdentityError(PEER_CERT_INVALID,
                            "the peer certificate's key usage must be digitalSignature without keyCertSign or cRLSign")
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(PEER_CERT_NOT_SPIFFE, "the peer certificate has no subject alternative name") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) > 1:
        raise IdentityError(PEER_CERT_MULTIPLE_URIS,
                            f"the peer certificate has {len(uris)} URI SANs; an X.509-SVID has exactly one")
    if not uris:
        raise IdentityError(PEER_CERT_NOT_SPIFFE, "the peer certificate has no URI SAN (no SPIFFE id)")
    try:
        sid = parse_spiffe_id(uris[0], require_path=True)
    except IdentityError as e:
        raise IdentityError(PEER_CERT_NOT_SPIFFE, f"the peer certificate's URI SAN: {e}") from None
    check_trust_domain(sid, trust_domains)
    return sid


def check_trust_domain(sid: SpiffeId, trust_domains) -> None:
    """IdentityError `untrusted_trust_domain` unless sid's trust domain is in `trust_domains`."""
    if sid.trust_domain not in trust_domains:
        raise IdentityError(UNTRUSTED_TRUST_DOMAIN, f"trust domain `{_show(sid.trust_domain)}` is not trusted")
