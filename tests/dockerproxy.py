"""A Unix-socket relay between a lockdown process and the real Docker socket, owned by a test.

Restarting the shared dockerd would disturb every other test on the machine,
yet the guard's reconnect path has to meet a daemon that goes away. So the
test points the guard at this relay (``DOCKER_HOST=unix://<relay.path>``):
bytes are copied both ways, unchanged, to /var/run/docker.sock. ``cut()``
closes every relayed connection (both ends) and removes the listening socket,
so new connections fail as they do while dockerd restarts; ``restore()``
listens again. Plain sockets and threads: nothing of Docker is faked, the
daemon on the other side answers every request.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

DOCKER_SOCKET = "/var/run/docker.sock"
CHUNK = 1 << 16


class DockerRelay:
    """Listens on ``path`` and relays each connection to ``upstream``; a context manager."""

    def __init__(self, path: Path, upstream: str = DOCKER_SOCKET) -> None:
        self.path = path
        self.upstream = upstream
        self.accepted = 0  # connections relayed so far (a reconnect shows up here)
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def __enter__(self) -> DockerRelay:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)

    def restore(self) -> None:
        """Listen again: as a daemon that is back."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        self._start(self._accept, listener)

    def cut(self) -> None:
        """Close every relayed connection, both ends, and stop listening (the socket file goes):
        to the client, exactly a daemon that stopped."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            _shut(listener)
            self.path.unlink(missing_ok=True)
        for a, b in pairs:
            _shut(a)
            _shut(b)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def _start(self, fn: object, *args: object) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut(): the listener was shut down
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                _shut(client)
                _shut(upstream)
                continue
            with self._lock:
                if self._listener is not listener:  # cut() while connecting: refuse
                    _shut(client)
                    _shut(upstream)
                    return
                self._pairs.append((client, upstream))
                self.accepted += 1
            self._start(self._copy, client, upstream)
            self._start(self._copy, upstream, client)

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        _shut(src)
        _shut(dst)
        with self._lock:
            self._pairs = [p for p in self._pairs if src not in p]


def _shut(sock: socket.socket) -> None:
    """Close both directions now (a blocked recv in another thread returns), then close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def short_dir() -> Path:
    """A private directory with a short path: a Unix socket path holds at most 107 bytes."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="lkd-"))
    os.chmod(path, 0o700)
    return path
