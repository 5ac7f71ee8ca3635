"""`python -m authz.server` runs `authz serve` (same options)."""
from authz.server.cli_serve import serve

if __name__ == "__main__":
    serve(prog_name="authz serve")
