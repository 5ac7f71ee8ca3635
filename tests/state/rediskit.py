"""A real redis-server for the shared-state tests: started on 127.0.0.1 on a free port with its own folder,
stopped (and restarted, for the failure tests) by the test."""
import os
import socket
import subprocess
import time

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, folder, password=None, port=None, persist=False):
        self.persist = persist  # an append-only file, fsync'd on every write: a restart keeps everything
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, command=None, password=None, username=None) -> "RedisServer":
        """Start it (with `command`: that redis-server command line instead, connecting as `username`)."""
        self.username = username
        if password is not None:
            self.password = password
        args = command or ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.folder,
                "--save", "", "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                "--protected-mode", "yes", "--daemonize", "no",
                "--logfile", os.path.join(self.folder, "redis.log"), "--maxmemory", "256mb",
                "--maxmemory-policy", "noeviction"]
        if self.password and command is None:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)
        client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, username=getattr(self, "username", None),
                           password=self.password, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def flush(self) -> None:
        c = self.client()
        c.flushall()
        c.close()


def redis_settings(server: RedisServer, **over):
    from authz.state.redis_config import RedisSettings
    fields = dict(url=server.url, password=server.password, key_prefix="t:", kek=b"k" * 32,
                  connect_timeout_s=1.0, command_timeout_s=1.0)
    fields.update(over)
    return RedisSettings(**fields)
