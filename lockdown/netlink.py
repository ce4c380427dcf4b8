"""The one place that talks rtnetlink (pyroute2).

Everything here works in the caller's network namespace, so lockdown run
through ``ip netns exec`` sees and changes only that namespace. pyroute2 is
imported on first use: it costs ~0.3 s, which playbook validation and the
snapshot actions should not pay.

``NetlinkError`` never escapes this module: EPERM becomes PrivilegeError,
ENODEV becomes NoSuchInterface, anything else ActionError. Functions that
add or delete report "already so" as a False return instead of an error,
because the callers' undo must be idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from lockdown import nlmsg
from lockdown.errors import ActionError, PrivilegeError, Unavailable

#: Lifetime value meaning "forever" in IFA_CACHEINFO.
INFINITE = 0xFFFFFFFF

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
SCOPE_GLOBAL = 0

# IFA_F_* (linux/if_addr.h). Flags above 0xff exist only in the u32 IFA_FLAGS
# attribute; ifaddrmsg.ifa_flags is a u8 and loses them.
ADDR_FLAGS = {
    0x01: "temporary",  # "secondary" for IPv4
    0x02: "nodad",
    0x04: "optimistic",
    0x08: "dadfailed",
    0x10: "home",
    0x20: "deprecated",
    0x40: "tentative",
    0x80: "permanent",
    0x100: "mngtmpaddr",
    0x200: "noprefixroute",
    0x400: "mcautojoin",
    0x800: "stable-privacy",
}
IFA_F_TEMPORARY = 0x01
#: The flags inet6_rtm_newaddr() accepts; the kernel derives the rest
#: (permanent, tentative, deprecated, ...) from lifetimes and DAD.
SETTABLE_ADDR_FLAGS = 0x02 | 0x04 | 0x10 | 0x100 | 0x200 | 0x400

RT_TABLE_LOCAL = 255
RT_TABLE_MAIN = 254
ROUTE_TYPES = {
    1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
    6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat",
}
ROUTE_PROTOS = {
    0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra",
    10: "mrt", 11: "zebra", 12: "bird", 16: "dhcp", 42: "babel", 186: "bgp", 187: "isis",
    188: "ospf", 189: "rip", 192: "eigrp",
}
ROUTE_PREFS = {0: "medium", 1: "high", 3: "low"}
IFF_UP = 0x1
IFF_LOOPBACK = 0x8


class NoSuchInterface(ActionError):
    """The interface named in a request does not exist (any more)."""

    def __init__(self, ifname: str) -> None:
        super().__init__(f"interface {ifname} does not exist")
        self.ifname = ifname


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    flags: int
    kind: str | None
    mac: str | None
    mtu: int | None
    operstate: str | None

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loopback": self.loopback, "up": self.up}


@dataclass(frozen=True)
class Address:
    """One interface address with every attribute needed to re-add it identically.

    ``preferred`` and ``valid`` are the *remaining* lifetimes in seconds at
    the moment of the dump (``INFINITE`` for none).
    """

    ifname: str
    ifindex: int
    family: int
    address: str
    prefixlen: int
    scope: int
    flags: int
    preferred: int = INFINITE
    valid: int = INFINITE
    label: str | None = None
    proto: int | None = None
    peer: str | None = None  # IPv4 point-to-point: IFA_ADDRESS when it differs from IFA_LOCAL
    broadcast: str | None = None

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def flag_names(self) -> list[str]:
        return [name for bit, name in ADDR_FLAGS.items() if self.flags & bit]

    @property
    def scope_name(self) -> str:
        return SCOPES.get(self.scope, str(self.scope))

    def as_dict(self) -> dict[str, Any]:
        """JSON form, for undo records and evidence (``from_dict`` reads it back)."""
        return {**asdict(self), "flag_names": self.flag_names, "scope_name": self.scope_name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Address:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Route:
    """One route as the kernel dumps it; ``expires`` is remaining seconds or None."""

    family: int
    dst: str  # "default" or "prefix/len"
    dst_len: int
    table: int
    metric: int
    proto: int
    type: int
    scope: int
    flags: int
    dev: str | None = None
    oif: int | None = None
    gateway: str | None = None
    prefsrc: str | None = None
    src: str | None = None
    pref: int | None = None
    expires: int | None = None
    metrics: dict[str, int] = field(default_factory=dict)
    multipath: list[dict[str, Any]] = field(default_factory=list)  # {"dev", "gateway", "hops", "flags"}

    @property
    def devices(self) -> set[str]:
        devs = {self.dev} if self.dev else set()
        devs.update(h["dev"] for h in self.multipath if h.get("dev"))
        return devs

    def key(self) -> tuple[Any, ...]:
        """What makes two routes "the same" for the kernel and for restore."""
        hops = tuple(sorted((h.get("dev") or "", h.get("gateway") or "") for h in self.multipath))
        return (self.family, self.table, self.dst, self.metric, self.type, self.dev, self.gateway, hops)

    def describe(self) -> str:
        parts = [self.dst]
        if self.gateway:
            parts.append(f"via {self.gateway}")
        if self.dev:
            parts.append(f"dev {self.dev}")
        for h in self.multipath:
            parts.append(f"nexthop via {h.get('gateway')} dev {h.get('dev')}")
        if self.table != RT_TABLE_MAIN:
            parts.append(f"table {self.table}")
        parts.append(f"metric {self.metric}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "type_name": ROUTE_TYPES.get(self.type, str(self.type)),
            "proto_name": ROUTE_PROTOS.get(self.proto, str(self.proto)),
            "pref_name": None if self.pref is None else ROUTE_PREFS.get(self.pref, str(self.pref)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Route:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------- plumbing


_SOCKET_LOCK = threading.RLock()
#: The one IPRoute socket this process keeps: (pid, netns inode, socket). See ``_ipr``.
_socket: tuple[int, int, Any] | None = None


def _netns() -> int:
    """The calling thread's network namespace (a socket lives in the netns it was made in)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


@contextmanager
def _ipr(doing: str) -> Iterator[Any]:
    """An IPRoute socket in the calling thread's netns; netlink errors become lockdown errors.

    One socket is kept and reused, one caller at a time: opening one costs
    pyroute2 ~1 ms of CPU (an asyncio loop each), and the strip opened six
    between an alert and the cut, ~3x that under a bot flood on 2 cores. It
    is replaced when the thread asking is in another netns (``ip netns exec``
    in tests, ``setns``) or the process forked, and dropped after any error
    so that a half-read answer never reaches the next caller.
    """
    global _socket
    try:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError as exc:  # pragma: no cover - a packaging problem
        raise Unavailable(f"cannot {doing}: pyroute2 is not installed ({exc})", "pip install pyroute2") from None
    with _SOCKET_LOCK:
        key = (os.getpid(), _netns())
        if _socket is not None and _socket[:2] != key:
            _close_socket()
        try:
            if _socket is None:
                _socket = (key[0], key[1], IPRoute())
            yield _socket[2]
        except NetlinkError as exc:
            _close_socket()
            raise _translate(exc.code, doing) from None
        except PermissionError:
            _close_socket()
            raise _translate(errno.EPERM, doing) from None
        except BaseException:
            _close_socket()
            raise


def _close_socket() -> None:
    global _socket
    if _socket is not None:
        pid, _, ipr = _socket
        _socket = None
        if pid == os.getpid():
            try:
                ipr.close()
            except Exception:  # noqa: BLE001 - a broken socket is dropped all the same
                pass


_NETLINK_ROUTE = 0
_RTM_DELADDR, _RTM_GETADDR, _RTM_GETROUTE = 21, 22, 26
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLM_F_REQUEST_ACK = 0x1 | 0x4
#: Messages one dump may return (a full-table BGP host has ~1M routes; lockdown reads addresses and routes).
_MAX_DUMP = 1 << 21


def _dump(kind: int, family: int | None, doing: str) -> list[Any]:
    """The messages of one rtnetlink dump (addresses or routes of ``family``, None for all).

    A plain AF_NETLINK socket, decoded by pyroute2's rtnl marshal, as
    ``NetlinkWatch`` reads notifications: through ``IPRoute`` (an asyncio
    loop per request) a route dump took 9 ms at the median and up to 45 ms
    under the bench's flood, against 3 ms, and the strip makes three before
    its cut. The socket belongs to the calling thread's netns.
    """
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    # ifaddrmsg (8 bytes) and rtmsg (12 bytes) both start with the family; the rest zero: no filter
    body = struct.pack("=B7x", family or 0) if kind == _RTM_GETADDR else struct.pack("=B11x", family or 0)
    marshal, out = MarshalRtnl(), []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_ROUTE) as sock:
            sock.settimeout(30)
            sock.sendto(nlmsg.header(len(body), kind, _NLM_F_REQUEST_DUMP) + body, (0, 0))
            while True:
                data = sock.recv(1 << 17)
                done = _dump_end(data, doing)
                out += [m for m in marshal.parse(data) if m["header"]["type"] == kind - 2]  # RTM_NEW*
                if done:
                    return out
                if len(out) > _MAX_DUMP:
                    raise ActionError(f"cannot {doing}: more than {_MAX_DUMP} entries")
    except PermissionError:
        raise _translate(errno.EPERM, doing) from None
    except OSError as exc:
        raise _translate(exc.errno or errno.EIO, doing) from None


def _dump_end(data: bytes, doing: str) -> bool:
    """True when ``data`` holds the dump's NLMSG_DONE; an NLMSG_ERROR raises, translated."""
    for off, _, kind in nlmsg.messages(data):
        if kind == nlmsg.NLMSG_DONE:
            return True
        if kind == nlmsg.NLMSG_ERROR and (code := nlmsg.error_code(data, off)):
            raise _translate(code, doing)
    return False


def _translate(code: int, doing: str) -> ActionError | PrivilegeError:
    if code in (errno.EPERM, errno.EACCES):
        return PrivilegeError(f"cannot {doing}: permission denied", "run as root (needs CAP_NET_ADMIN)")
    return ActionError(f"cannot {doing}: {os.strerror(code)}")


def _code(exc: BaseException) -> int | None:
    from pyroute2.netlink.exceptions import NetlinkError

    return exc.code if isinstance(exc, NetlinkError) else None


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def interface_names() -> list[str]:
    """Every interface name in this netns, by index: ``if_nameindex(3)``, in this thread's netns too.

    A link dump answers the same, but pyroute2 decodes every attribute of
    every link (statistics included): ~8 ms of CPU for ten links, paid in
    the strip's preflight between an alert and the first change. The dumps
    here take names from ``if_nameindex`` for the same reason.
    """
    return [name for _, name in sorted(socket.if_nameindex())]


def _index(ipr: Any, ifname: str) -> int:
    """``link_index``, raising NoSuchInterface for a name that is not there."""
    index = link_index(ifname)
    if index is None:
        raise NoSuchInterface(ifname)
    return index


# ------------------------------------------------------------------ links


def list_links() -> list[Link]:
    """Every interface in this netns, by index. Raises PrivilegeError/ActionError."""
    with _ipr("list interfaces") as ipr:
        return sorted((_link(m) for m in ipr.link("dump")), key=lambda link: link.index)


def _link(m: Any) -> Link:
    info = _attr(m, "IFLA_LINKINFO")
    return Link(
        index=int(m["index"]),
        name=str(_attr(m, "IFLA_IFNAME")),
        flags=int(m["flags"]),
        kind=info.get_attr("IFLA_INFO_KIND") if info is not None else None,
        mac=_attr(m, "IFLA_ADDRESS"),
        mtu=_attr(m, "IFLA_MTU"),
        operstate=_attr(m, "IFLA_OPERSTATE"),
    )


def links_and_addresses(family: int | None = AF_INET6) -> tuple[list[Link], list[Address]]:
    """``list_links()`` and ``dump_addresses(family)`` from one socket and one link dump.

    ``ipv6.strip`` needs both in its preflight, between the alert and the
    first change: asked apart they cost a second socket and a second link
    dump, which pyroute2 decodes in Python.
    """
    with _ipr("list interfaces and addresses") as ipr:
        links = sorted((_link(m) for m in ipr.link("dump")), key=lambda link: link.index)
        msgs = list(ipr.addr("dump", **({"family": family} if family is not None else {})))
    names = {link.index: link.name for link in links}
    return links, [_address(m, names) for m in msgs if family is None or int(m["family"]) == family]


def link_index(ifname: str) -> int | None:
    """The interface's index in the calling thread's netns, or None when there is no such interface.

    ``if_nametoindex(3)``: a link lookup through pyroute2 dumps and decodes every link.
    """
    try:
        return socket.if_nametoindex(ifname)
    except (OSError, ValueError):  # no such interface; a name with a NUL byte
        return None


# -------------------------------------------------------------- addresses


def dump_addresses(family: int | None = AF_INET6, ifname: str | None = None) -> list[Address]:
    """Addresses in kernel dump order (per interface: newest first within a scope).

    ``family`` None means IPv4 and IPv6. Flags come from IFA_FLAGS (u32) when
    present, lifetimes from IFA_CACHEINFO (remaining seconds). Raises
    NoSuchInterface when ``ifname`` is given and does not exist.
    """
    if ifname is not None:
        _index(None, ifname)  # NoSuchInterface before the dump
    names = dict(socket.if_nameindex())
    msgs = _dump(_RTM_GETADDR, family, "dump addresses")
    out = []
    for m in msgs:
        fam = int(m["family"])
        if family is not None and fam != family:
            continue
        index = int(m["index"])
        if ifname is not None and names.get(index) != ifname:
            continue
        out.append(_address(m, names))
    return out


def _address(m: Any, names: dict[int, str]) -> Address:
    """An address message (a dump's answer, or a notification) as an Address."""
    index = int(m["index"])
    flags = _attr(m, "IFA_FLAGS")
    cache = _attr(m, "IFA_CACHEINFO") or {}
    local = _attr(m, "IFA_LOCAL")
    address = _attr(m, "IFA_ADDRESS")
    main = local or address
    return Address(
        ifname=names.get(index, str(index)),
        ifindex=index,
        family=int(m["family"]),
        address=str(main),
        prefixlen=int(m["prefixlen"]),
        scope=int(m["scope"]),
        flags=int(flags if flags is not None else m["flags"]),
        preferred=int(cache.get("ifa_preferred", INFINITE)),
        valid=int(cache.get("ifa_valid", INFINITE)),
        label=_attr(m, "IFA_LABEL"),
        proto=_attr(m, "IFA_PROTO"),
        peer=address if local and address and address != local else None,
        broadcast=_attr(m, "IFA_BROADCAST"),
    )


def add_address(
    ifname: str,
    address: str,
    prefixlen: int,
    *,
    flags: int = 0,
    preferred: int = INFINITE,
    valid: int = INFINITE,
    label: str | None = None,
    proto: int | None = None,
) -> bool:
    """Add an address; True if added, False if it was already there (EEXIST).

    ``flags`` is masked to what the kernel accepts and sent in IFA_FLAGS, so
    noprefixroute and mngtmpaddr (> 0xff) survive. Lifetimes are sent only
    when finite: an address added without them never expires and is
    "permanent", exactly like one added with ``ip addr add``.
    Raises NoSuchInterface, PrivilegeError or ActionError.
    """
    doing = f"add {address}/{prefixlen} to {ifname}"
    kwargs: dict[str, Any] = {"address": address, "prefixlen": prefixlen, "flags": flags & SETTABLE_ADDR_FLAGS}
    if preferred != INFINITE or valid != INFINITE:
        kwargs["preferred_lft"] = min(preferred, valid)
        kwargs["valid_lft"] = valid
    if label:
        kwargs["label"] = label
    if proto:
        kwargs["proto"] = proto
    with _ipr(doing) as ipr:
        kwargs["index"] = _index(ipr, ifname)
        try:
            ipr.addr("add", **kwargs)
        except Exception as exc:
            if _code(exc) == errno.EEXIST:
                return False
            raise
    return True


def delete_address(ifname: str, address: str, prefixlen: int) -> bool:
    """Delete an address; True if deleted, False if it was not there.

    One RTM_DELADDR on a plain socket, as ``ip addr del`` sends it (IFA_LOCAL
    and IFA_ADDRESS): for the strip this is the cut, and through ``IPRoute``
    it took up to 10 ms under the bench's flood. Raises NoSuchInterface,
    PrivilegeError or ActionError.
    """
    doing = f"delete {address}/{prefixlen} from {ifname}"
    index = _index(None, ifname)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ActionError(f"cannot {doing}: not an IP address") from None
    family = AF_INET6 if ip.version == 6 else AF_INET
    raw = ip.packed
    attr = struct.pack("=HH", 4 + len(raw), _IFA_LOCAL) + raw + struct.pack("=HH", 4 + len(raw), _IFA_ADDRESS) + raw
    body = struct.pack("=BBBBI", family, prefixlen, 0, 0, index) + attr
    code = _request(_RTM_DELADDR, body, doing)
    if code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
        return False
    if code == errno.ENODEV:
        raise NoSuchInterface(ifname)
    if code:
        raise _translate(code, doing)
    return True


def _request(kind: int, body: bytes, doing: str) -> int:
    """Send one rtnetlink request asking for an acknowledgement; its errno (0: done)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_ROUTE) as sock:
            sock.settimeout(30)
            sock.sendto(nlmsg.header(len(body), kind, _NLM_F_REQUEST_ACK) + body, (0, 0))
            while True:
                data = sock.recv(1 << 16)
                for off, _, got in nlmsg.messages(data):
                    if got == nlmsg.NLMSG_ERROR:
                        return nlmsg.error_code(data, off)
    except PermissionError:
        return errno.EPERM
    except OSError as exc:
        raise _translate(exc.errno or errno.EIO, doing) from None


# ----------------------------------------------------------------- routes


def _clk_tck() -> int:
    try:
        return os.sysconf("SC_CLK_TCK") or 100
    except (ValueError, OSError):  # pragma: no cover
        return 100


def dump_routes(family: int | None = AF_INET6, *, include_local: bool = False) -> list[Route]:
    """Routes of every table, in kernel dump order.

    The local table (255) is left out unless ``include_local``: the kernel
    owns it and rebuilds it from the addresses. ``expires`` is taken from
    RTA_CACHEINFO, which the kernel reports in clock ticks.
    """
    hz = _clk_tck()
    names = dict(socket.if_nameindex())
    msgs = _dump(_RTM_GETROUTE, family, "dump routes")
    out = []
    for m in msgs:
        fam = int(m["family"])
        if fam not in (AF_INET, AF_INET6) or (family is not None and fam != family):
            continue
        table = _attr(m, "RTA_TABLE")
        table = int(table if table is not None else m["table"])
        if table == RT_TABLE_LOCAL and not include_local:
            continue
        dst_len = int(m["dst_len"])
        dst = _attr(m, "RTA_DST")
        dst_text = f"{dst}/{dst_len}" if dst else "default"
        src = _attr(m, "RTA_SRC")
        oif = _attr(m, "RTA_OIF")
        cache = _attr(m, "RTA_CACHEINFO") or {}
        ticks = int(cache.get("rta_expires", 0) or 0)
        metrics_nla = _attr(m, "RTA_METRICS")
        metrics: dict[str, int] = {}
        if metrics_nla is not None:
            for name, value in metrics_nla.get("attrs", []):
                metrics[str(name).removeprefix("RTAX_").lower()] = int(value)
        hops = []
        for nh in _attr(m, "RTA_MULTIPATH") or []:
            hop_oif = nh.get("oif")
            hops.append(
                {
                    "dev": names.get(int(hop_oif)) if hop_oif else None,
                    "gateway": nh.get_attr("RTA_GATEWAY"),
                    "hops": int(nh.get("hops", 0)),
                    "flags": int(nh.get("flags", 0)),
                }
            )
        out.append(
            Route(
                family=fam,
                dst=dst_text,
                dst_len=dst_len,
                table=table,
                metric=int(_attr(m, "RTA_PRIORITY") or 0),
                proto=int(m["proto"]),
                type=int(m["type"]),
                scope=int(m["scope"]),
                flags=int(m["flags"]),
                dev=names.get(int(oif)) if oif else None,
                oif=int(oif) if oif else None,
                gateway=_attr(m, "RTA_GATEWAY"),
                prefsrc=_attr(m, "RTA_PREFSRC"),
                src=f"{src}/{m['src_len']}" if src else None,
                pref=_attr(m, "RTA_PREF"),
                expires=-(-ticks // hz) if ticks > 0 else None,
                metrics=metrics,
                multipath=hops,
            )
        )
    return out


def add_route(route: Route, *, expires: int | None = None, replace: bool = False) -> bool:
    """Add ``route``; True if added, False if it already exists (EEXIST).

    Interfaces are looked up by name, so a route goes back onto a re-created
    interface of the same name. ``expires`` (seconds) overrides the record's
    remaining lifetime. ``replace`` overwrites the existing route with the
    same destination, table and metric (the kernel strips ``src`` from
    routes when that address is deleted). Raises NoSuchInterface,
    PrivilegeError or ActionError.
    """
    doing = f"{'replace' if replace else 'add'} route {route.describe()}"
    kwargs: dict[str, Any] = {
        "family": route.family,
        "dst_len": route.dst_len,
        "table": route.table,
        "priority": route.metric,
        "proto": route.proto,
        "type": route.type,
        "scope": route.scope,
    }
    if route.dst != "default":
        kwargs["dst"] = route.dst.split("/")[0]
    if route.gateway:
        kwargs["gateway"] = route.gateway
    if route.prefsrc:
        kwargs["prefsrc"] = route.prefsrc
    if route.src:
        addr, _, plen = route.src.partition("/")
        kwargs["src"] = addr
        kwargs["src_len"] = int(plen or 0)
    if route.pref is not None and route.family == AF_INET6:
        kwargs["pref"] = route.pref
    lifetime = route.expires if expires is None else expires
    if lifetime:
        kwargs["expires"] = struct.pack("=I", lifetime)
    if route.metrics:
        kwargs["metrics"] = dict(route.metrics)
    with _ipr(doing) as ipr:
        if route.dev:
            kwargs["oif"] = _index(ipr, route.dev)
        if route.multipath:
            hops = []
            for h in route.multipath:
                hop: dict[str, Any] = {"hops": h.get("hops", 0)}
                if h.get("dev"):
                    hop["oif"] = _index(ipr, h["dev"])
                if h.get("gateway"):
                    hop["gateway"] = h["gateway"]
                hops.append(hop)
            kwargs["multipath"] = hops
        try:
            ipr.route("replace" if replace else "add", **kwargs)
        except Exception as exc:
            if _code(exc) == errno.EEXIST:
                return False
            raise
    return True


def route_source(dst: str) -> str | None:
    """The source address the kernel would pick to reach ``dst``, or None if unroutable."""
    try:
        with _ipr(f"look up the route to {dst}") as ipr:
            msgs = list(ipr.route("get", dst=dst))
    except ActionError:
        return None
    for m in msgs:
        src = _attr(m, "RTA_PREFSRC")
        if src:
            return str(src)
    return None


# ----------------------------------------------------------------- events

#: Multicast groups the guard follows: IPv6 addresses, IPv6 routes, links.
_GROUP_LINK = 0x1  # RTMGRP_LINK
_GROUP_IPV6_IFADDR = 0x100  # RTMGRP_IPV6_IFADDR
_GROUP_IPV6_ROUTE = 0x400  # RTMGRP_IPV6_ROUTE
_EVENT_KINDS = {
    "RTM_NEWADDR": "addr-new",
    "RTM_DELADDR": "addr-del",
    "RTM_NEWROUTE": "route-new",
    "RTM_DELROUTE": "route-del",
    "RTM_NEWLINK": "link-new",
    "RTM_DELLINK": "link-del",
}


@dataclass(frozen=True)
class NetEvent:
    """One rtnetlink notification, or ``resync`` (events may have been missed: compare again).

    ``port`` is the netlink header's pid: the port id of the socket whose
    request caused the change, when the kernel passes it on (route changes
    made with ``ip route`` carry it; address notifications carry 0, so it is
    None there). ``received`` is ``time.time()`` when the message was read.
    """

    kind: str  # addr-new | addr-del | route-new | route-del | link-new | link-del | resync
    received: float
    ifindex: int | None = None
    ifname: str | None = None
    family: int | None = None
    address: str | None = None
    prefixlen: int | None = None
    scope: int | None = None
    port: int | None = None
    reason: str = ""
    addr: Address | None = None  # address events: everything the message says (flags, proto, lifetimes)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "") and k != "addr"}


def _lost_reason(code: int) -> str:
    """Why the watch socket was reopened, for the guard's output and log."""
    if code == errno.ENOBUFS:
        return "the kernel dropped netlink notifications (receive queue overflowed, ENOBUFS); socket reopened"
    return f"netlink socket: {os.strerror(code)}; socket reopened"


class NetlinkWatch:
    """Follows IPv6 address, IPv6 route and link notifications in the caller's netns.

    Why not ``IPRoute().bind()`` + ``get()``: in pyroute2 0.9 that socket is
    driven by an asyncio loop that reads ahead, so a ``select()`` on its fd
    misses messages it already buffered (measured: 15 of 30 address
    notifications seen) and ``get()`` cannot be interrupted from another
    thread. A plain AF_NETLINK socket bound to the same groups, decoded by
    pyroute2's own rtnl marshal, sees every message, and ``close()`` wakes it
    through a pipe. When the kernel drops notifications (ENOBUFS: the
    receive buffer overflowed) or the socket breaks, the socket is reopened
    and a ``resync`` event tells the consumer to compare the live state
    again, as it does at start (the first event is always a ``resync``).
    """

    def __init__(self) -> None:
        import threading

        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._names: dict[int, str] = {}

    def close(self) -> None:
        """Stop iterating (safe from another thread); the iterator returns."""
        self._stop = True
        with self._pipe_lock:
            if self._pipe_open:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass

    def _close_pipe(self) -> None:
        with self._pipe_lock:
            if self._pipe_open:
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _open(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)  # NETLINK_ROUTE
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, _GROUP_LINK | _GROUP_IPV6_IFADDR | _GROUP_IPV6_ROUTE))
        except PermissionError:
            raise _translate(errno.EPERM, "follow netlink notifications") from None
        except OSError as exc:
            raise _translate(exc.errno or errno.EIO, "follow netlink notifications") from None
        self._names = {link.index: link.name for link in list_links()}
        return sock

    def __iter__(self) -> Iterator[NetEvent]:
        import select
        import time

        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        marshal = MarshalRtnl()
        reason = "start"
        try:
            while not self._stop:
                sock = self._open()
                try:
                    yield NetEvent("resync", time.time(), reason=reason)
                    while not self._stop:
                        ready, _, _ = select.select([sock.fileno(), self._wake_r], [], [])
                        if sock.fileno() not in ready:
                            continue
                        try:
                            data = sock.recv(1 << 16)
                        except OSError as exc:  # ENOBUFS: the receive queue overflowed
                            reason = _lost_reason(exc.errno or errno.EIO)
                            break
                        now = time.time()
                        for msg in marshal.parse(data):
                            event = self._event(msg, now)
                            if event is not None:
                                yield event
                finally:
                    sock.close()
        finally:
            self._close_pipe()

    def _event(self, msg: Any, now: float) -> NetEvent | None:
        kind = _EVENT_KINDS.get(str(msg.get("event")))
        if kind is None:
            return None
        pid = int(msg["header"].get("pid") or 0) or None
        if kind.startswith("link"):
            index = int(msg["index"])
            name = _attr(msg, "IFLA_IFNAME")
            if kind == "link-new" and name:
                self._names[index] = str(name)
            else:
                name = self._names.pop(index, name)
            return NetEvent(kind, now, ifindex=index, ifname=name, port=pid)
        family = int(msg["family"])
        if kind.startswith("addr"):
            index = int(msg["index"])
            addr = _address(msg, self._names)
            return NetEvent(
                kind, now, ifindex=index, ifname=self._names.get(index), family=family,
                address=addr.address, prefixlen=addr.prefixlen, scope=addr.scope, port=pid, addr=addr,
            )
        oif = _attr(msg, "RTA_OIF")
        dst = _attr(msg, "RTA_DST")
        return NetEvent(
            kind, now, ifindex=int(oif) if oif else None, ifname=self._names.get(int(oif)) if oif else None,
            family=family, address=str(dst) if dst else "default", prefixlen=int(msg["dst_len"]), port=pid,
        )
