"""authz: decides, in microseconds, whether an AI agent may make the tool call it is making (Cedar policies)."""

from .compiler import compile_sources as compile
from .engine import Decision, Engine
from .errors import AuthzError, CompileError, IndexUnavailableError, RequestError

__all__ = ["compile", "Engine", "Decision", "AuthzError", "CompileError", "IndexUnavailableError", "RequestError"]
__version__ = "0.1.0"
