"""The AuthzError hierarchy: every error authz raises, each with a stable snake_case code."""


class AuthzError(Exception):
    """Base of every error authz raises on purpose."""

    code = "authz_error"


class CompileError(AuthzError):
    """Policies or entities could not be compiled; `diagnostics` holds one `file:line:col: message` per problem."""

    code = "compile_error"

    def __init__(self, diagnostics):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(self.diagnostics))


class IndexUnavailableError(AuthzError):
    """The policy index is missing, not an authz index, or corrupted."""

    code = "index_unavailable"


class RequestError(AuthzError):
    """A decision request is malformed (bad uid, bad context value, wrong shape)."""

    code = "request_parse_error"


class IdentityError(AuthzError):
    """A caller's identity could not be established (bad token, bad peer certificate, untrusted trust domain).

    `code` is the stable reason (`token_expired`, `peer_cert_invalid`, ...): it is the deny
    reason servers answer with and the decision log records.
    """

    code = "identity_invalid"

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
