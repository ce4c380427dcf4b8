"""Clients inside a network namespace, shared by the tests and bench/ (no pytest here).

A socket created while the calling thread is inside a namespace (``setns``)
stays there, so a test or a bench can talk to a ``lockdown serve`` running in
its own ``lkd-`` namespace without touching the host's network.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Move the calling thread (only) into ``name`` and back. Sockets made inside stay there."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
    finally:
        os.close(own)
        os.close(target)


def ns_socket(netns: str | None) -> socket.socket:
    """A TCP/IPv4 socket inside ``netns`` (not connected)."""
    with in_netns(netns):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def ns_connect(netns: str | None, port: int, timeout: float = 10) -> socket.socket:
    """A socket inside ``netns`` connected to 127.0.0.1:``port`` there."""
    sock = ns_socket(netns)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


class SlowClients:
    """``n`` connections, each sending one header byte every ``every`` seconds, reconnecting when cut off.

    The slow-client attack of issue 13 on ``lockdown serve``; ``connect`` makes
    one connected socket. ``reconnects`` counts how often serve cut one off.
    Use as a context manager: the clients run in a thread until the block ends.
    """

    def __init__(self, connect: Callable[[], socket.socket], n: int = 40, every: float = 2.5) -> None:
        self.connect = connect
        self.n = n
        self.every = every
        self.stop = threading.Event()
        self.reconnects = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _open(self) -> socket.socket:
        sock = self.connect()
        sock.sendall(b"POST /v1/alerts/generic HTTP/1.1\r\n")
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        socks = [self._open() for _ in range(self.n)]
        while not self.stop.wait(self.every):
            for i, sock in enumerate(socks):
                try:
                    alive = sock.recv(4096) != b""
                except BlockingIOError:
                    alive = True
                except OSError:
                    alive = False
                if alive:
                    try:
                        sock.send(b"X")
                        continue
                    except OSError:
                        pass
                sock.close()
                socks[i] = self._open()
                self.reconnects += 1
        for sock in socks:
            sock.close()
