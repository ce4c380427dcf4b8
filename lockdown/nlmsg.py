"""Netlink message framing: the one reader of the headers of a netlink answer.

Both plain-socket readers of the kernel's answers use it: rtnetlink dumps and
requests in netlink.py, and sock_diag in hostfacts.py. Only the framing lives
here (length, type, the errno of NLMSG_ERROR); each home decodes its own bodies.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

NLMSG_ERROR, NLMSG_DONE = 2, 3
HEADER = 16


def header(length: int, kind: int, flags: int) -> bytes:
    """A request's nlmsghdr for a body of ``length`` bytes (sequence 1, port 0: the kernel's)."""
    return struct.pack("=IHHII", HEADER + length, kind, flags, 1, 0)


def messages(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(offset, length, type) of each message in one recv().

    An empty answer or a length shorter than a header raises OSError(EPROTO):
    a live kernel socket sends neither, and looping on them would spin forever.
    """
    if not data:
        raise OSError(errno.EPROTO, "empty netlink answer")
    off = 0
    while off + HEADER <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < HEADER:
            raise OSError(errno.EPROTO, "netlink message shorter than its header")
        yield off, length, kind
        off += (length + 3) & ~3


def error_code(data: bytes, off: int) -> int:
    """The errno an NLMSG_ERROR at ``off`` carries (0: an acknowledgement)."""
    return int(-struct.unpack_from("=i", data, off + HEADER)[0])
