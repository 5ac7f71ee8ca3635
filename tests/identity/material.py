"""Test material made on the spot: signing keys, JWKS and SPIFFE bundles, signed and forged tokens, SPIFFE certificates."""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

ISSUER = "https://idp.test"
AUDIENCE = "authz"
TRUST_DOMAIN = "example.org"
_ALGS = get_default_algorithms()
_RSA_CACHE: dict = {}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(doc) -> str:
    return b64(json.dumps(doc, separators=(",", ":")).encode())


class SigningKey:
    """A private key, its kid, the algorithm it signs with, and its public JWK."""

    def __init__(self, alg: str, kid: str, bits: int = 2048):
        self.alg, self.kid = alg, kid
        if alg.startswith(("RS", "PS")):
            # RSA generation is the slow part: share one key per size across the session.
            if bits not in _RSA_CACHE:
                _RSA_CACHE[bits] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            self.private = _RSA_CACHE[bits]
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif alg == "ES384":
            self.private = ec.generate_private_key(ec.SECP384R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            raise ValueError(alg)
        self.jwk = dict(self.jwk, kid=kid)

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict, header: dict | None = None, alg: str | None = None) -> str:
        """A compact JWS of `claims`; `header` overrides/extends {alg, kid, typ}."""
        alg = alg or self.alg
        h = {"alg": alg, "kid": self.kid, "typ": "JWT"}
        h.update(header or {})
        h = {k: v for k, v in h.items() if v is not None}
        signing_input = f"{b64json(h)}.{b64json(claims)}".encode()
        return signing_input.decode() + "." + b64(_ALGS[alg].sign(signing_input, self.private))


def jwks(*keys: SigningKey, **extra) -> dict:
    return {"keys": [dict(k.jwk, **extra) for k in keys]}


def spiffe_bundle(*keys: SigningKey, x509_ca: x509.Certificate | None = None, sequence: int = 1) -> dict:
    entries = [dict(k.jwk, use="jwt-svid") for k in keys]
    if x509_ca is not None:
        entries.append({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA",
                        "x5c": [base64.b64encode(x509_ca.public_bytes(serialization.Encoding.DER)).decode()]})
    return {"keys": entries, "spiffe_sequence": sequence, "spiffe_refresh_hint": 300}


def claims(sub="agent-1", iss=ISSUER, aud=AUDIENCE, ttl=300, now=None, **extra) -> dict:
    now = int(time.time() if now is None else now)
    doc = {"iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": now + ttl}
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


def unsigned(claims_doc: dict) -> str:
    """`alg: none`, empty signature."""
    return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims_doc)}."


def hs256_with_public_key(key: SigningKey, claims_doc: dict) -> str:
    """The classic key confusion: HS256 with the issuer's RSA public key (PEM) as the HMAC secret."""
    h = b64json({"alg": "HS256", "kid": key.kid, "typ": "JWT"})
    signing_input = f"{h}.{b64json(claims_doc)}".encode()
    return signing_input.decode() + "." + b64(hmac.new(key.public_pem(), signing_input, hashlib.sha256).digest())


def tamper_payload(token: str, **changes) -> str:
    h, p, s = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    doc.update(changes)
    return f"{h}.{b64json(doc)}.{s}"


def tamper_signature(token: str) -> str:
    h, p, s = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{h}.{p}.{b64(bytes(raw))}"


# -- certificates --------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CertificateAuthority:
    """A self-signed CA (optionally with a SPIFFE trust-domain URI) issuing leaf certificates."""

    def __init__(self, trust_domain: str = TRUST_DOMAIN):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (x509.CertificateBuilder()
                     .subject_name(_name(f"{trust_domain} CA")).issuer_name(_name(f"{trust_domain} CA"))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(hours=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .add_extension(x509.SubjectAlternativeName(
                         [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
                     .add_extension(ski, critical=False)
                     .sign(self.key, hashes.SHA256()))

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, uris=(), dns=(), ca: bool = False, key_cert_sign: bool = False, ips=()):
        """(cert, key) of a leaf with these URI, DNS and IP address SANs."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns] + [
            x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([])).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=True, key_cert_sign=key_cert_sign, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert, key


def cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_leaf(folder, name: str, ca: CertificateAuthority, uris=(), dns=()):
    """Write <name>.pem and <name>-key.pem; returns their paths."""
    cert, key = ca.issue(uris, dns)
    c, k = folder / f"{name}.pem", folder / f"{name}-key.pem"
    c.write_bytes(cert_pem(cert))
    k.write_bytes(key_pem(key))
    return c, k
