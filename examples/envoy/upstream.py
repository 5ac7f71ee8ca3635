"""A tiny upstream for the Envoy example: answers GET with a line of text and MCP `tools/call` with a JSON-RPC result.

    python3 examples/envoy/upstream.py 8080      # listens on 127.0.0.1:8080
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 65536


class Upstream(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self._answer("text/plain", f"hello from the upstream: {self.path}")

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("content-length") or 0)
        if not 0 <= length <= MAX_BODY:
            self.send_error(413)
            return
        try:
            call = json.loads(self.rfile.read(length))
            result = {"content": [{"type": "text", "text": f"{call['params']['name']} called"}]}
            body = {"jsonrpc": "2.0", "id": call.get("id"), "result": result}
        except (ValueError, KeyError, TypeError):
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "not a tools/call"}}
        self._answer("application/json", json.dumps(body, separators=(",", ":")))

    def _answer(self, content_type: str, text: str):
        data = text.encode()
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), Upstream).serve_forever()
