"""The one place that talks to the Docker daemon.

Every call goes through ``docker_call`` so that ``docker.errors.DockerException``
and ``requests.ConnectionError`` (a daemon that dies mid-session raises the
latter, which is not a DockerException) become lockdown errors once, here:

=====================================  ==================  ====
cause                                  error               exit
=====================================  ==================  ====
daemon unreachable (down, bad socket)  Unavailable         5
socket permission denied               PrivilegeError      4
container not found while resolving    BadInput            2
container gone after it was resolved   ActionError         1
any other answer from the daemon       ActionError         1
=====================================  ==================  ====

Functions that work on a container take the container's id (or name) and a
``name`` used in messages; they are only called after ``resolve_containers``,
so a "no such container" there means it vanished mid-run.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
import threading
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lockdown.errors import ActionError, BadInput, PrivilegeError, Setting, Unavailable

if TYPE_CHECKING:
    import docker

T = TypeVar("T")
_client: docker.DockerClient | None = None
_client_lock = threading.Lock()

#: The reads already answered inside ``one_look()`` (None outside it).
_reads: ContextVar[dict[tuple[Any, ...], Any] | None] = ContextVar("lockdown_docker_reads", default=None)

#: Label Docker Compose puts on every container: the service name (Mailu: front, smtp, ...).
COMPOSE_SERVICE = "com.docker.compose.service"
#: Bytes read from the daemon per chunk when streaming logs and archives.
CHUNK = 1 << 20


def client() -> docker.DockerClient:
    """A shared client from the environment (DOCKER_HOST or the local socket).

    Raises Unavailable when the daemon cannot be reached and PrivilegeError
    when the socket refuses us.
    """
    global _client
    with _client_lock:
        if _client is None:
            import docker

            try:
                _client = docker.from_env(timeout=30)
            except docker.errors.DockerException as exc:
                raise _translate(exc, "connect to the Docker daemon") from None
        return _client


def reset_client() -> None:
    global _client
    with _client_lock:
        if _client is not None:
            try:
                _client.close()
            except Exception:  # noqa: BLE001 - closing a broken client
                pass
        _client = None


def _translate(exc: BaseException, doing: str, vanished: str | None = None) -> Exception:
    """The lockdown error for a docker/requests exception.

    ``vanished`` names a container that was resolved earlier: "not found" for
    it means it disappeared during the run (ActionError), not bad input.
    """
    import docker
    import requests

    text = str(exc)
    if isinstance(exc, docker.errors.NotFound):
        if vanished is not None:
            return ActionError(
                f"cannot {doing}: container {vanished} disappeared during the run (removed?)",
                "everything journaled so far stays restorable: `lockdown restore INCIDENT`",
            )
        return BadInput(f"cannot {doing}: not found ({exc.explanation or text})")
    if isinstance(exc, docker.errors.APIError):
        explanation = str(exc.explanation or text)
        if exc.status_code == 409 and "paused" in explanation:
            return ActionError(
                f"cannot {doing}: the container is paused and Docker refuses exec in a paused "
                "container (HTTP 409 Conflict)",
                "hold the queue before pausing (put postfix.hold_queue before docker.pause), "
                "or unpause the container first",
            )
        return ActionError(f"cannot {doing}: Docker said {explanation}")
    perm = "Permission denied" in text or f"Errno {errno.EACCES}" in text
    if perm:
        return PrivilegeError(
            f"cannot {doing}: permission denied on the Docker socket {daemon_address()}",
            "run as root or as a member of the docker group",
        )
    if isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException)):
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        return Unavailable(
            f"cannot {doing}: the Docker daemon at {daemon_address()} is unreachable ({first})",
            "start it (systemctl start docker), or point DOCKER_HOST at the right socket",
        )
    return exc if isinstance(exc, Exception) else RuntimeError(text)


def daemon_address() -> str:
    """Where the client looks for the daemon: DOCKER_HOST, or the default socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_call(doing: str, fn: Callable[[], T], *, vanished: str | None = None) -> T:
    """Run ``fn`` and translate Docker and connection errors into lockdown errors.

    ``vanished``: the name of an already-resolved container (see ``_translate``).
    """
    import docker
    import requests

    try:
        return fn()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _translate(exc, doing, vanished) from None


def _guard_stream(doing: str, chunks: Iterator[bytes], vanished: str | None) -> Iterator[bytes]:
    """Translate errors raised while a stream is being read (the daemon may die mid-stream)."""
    import docker
    import requests
    import urllib3

    try:
        yield from chunks
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _translate(exc, doing, vanished) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise Unavailable(
            f"cannot {doing}: the connection to the Docker daemon broke ({exc})",
            "check that dockerd is running, then run the step again",
        ) from None


def ping(who: str = "lockdown") -> None:
    """Raise Unavailable/PrivilegeError unless the daemon answers."""
    c = client()
    docker_call(f"reach the Docker daemon for {who}", c.ping)


def api() -> Any:
    """The low-level APIClient of the shared client."""
    return client().api


@contextmanager
def one_look() -> Iterator[None]:
    """Inside the block, each read (a container listing, an inspection, the networks) is asked once.

    A run's preflight resolves every step's containers before anything
    changes: ``relay-incident`` names the same container in five steps, and
    ``container = "stack"`` lists and inspects the whole stack for each. Each
    answer costs ~5 ms on Docker 20.10, all of it between the alert and the
    first change; nothing changes during preflight, so one answer serves every
    step. Failures are not kept.
    """
    token = _reads.set({})
    try:
        yield
    finally:
        _reads.reset(token)


def _read(key: tuple[Any, ...], fetch: Callable[[], T]) -> T:
    """``fetch()``, or its answer from earlier in the same ``one_look()``."""
    memo = _reads.get()
    if memo is None:
        return fetch()
    if key not in memo:
        memo[key] = fetch()
    answer: T = memo[key]
    return answer


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class ContainerRef:
    """A container as resolved before the run: what the journal records."""

    id: str
    name: str
    status: str  # running | paused | exited | created | restarting | dead
    image: str
    service: str | None
    ports: tuple[str, ...]  # "0.0.0.0:2525->25/tcp", ...

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "image": self.image,
            "service": self.service,
            "ports": list(self.ports),
        }

    def show(self) -> str:
        extra = [self.status]
        if self.service:
            extra.append(f"service {self.service}")
        if self.ports:
            extra.append(", ".join(self.ports))
        return f"{self.name} ({'; '.join(extra)})"


def _ref_from_list(item: dict[str, Any]) -> ContainerRef:
    names = item.get("Names") or [item["Id"][:12]]
    ports = []
    for p in item.get("Ports") or []:
        if p.get("PublicPort"):
            ip = p.get("IP", "")
            host = f"[{ip}]" if ":" in ip else ip
            ports.append(f"{host}:{p['PublicPort']}->{p['PrivatePort']}/{p.get('Type', 'tcp')}")
    return ContainerRef(
        id=item["Id"],
        name=names[0].lstrip("/"),
        status=item.get("State", "unknown"),
        image=item.get("Image", ""),
        service=(item.get("Labels") or {}).get(COMPOSE_SERVICE),
        ports=tuple(sorted(set(ports))),
    )


def port_bindings(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every published binding of an inspect document: (container port as Docker writes it,
    e.g. ``25/tcp``; HostIp; HostPort), empty strings where Docker left a field out.
    The one walk of NetworkSettings.Ports, for the journal's ContainerRef and for the audit."""
    out = []
    for cport, bindings in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items():
        for b in bindings or []:
            out.append((str(cport), str(b.get("HostIp") or ""), str(b.get("HostPort") or "")))
    return out


def ref_from_inspect(data: dict[str, Any]) -> ContainerRef:
    ports = []
    for cport, ip, host_port in port_bindings(data):
        host = f"[{ip}]" if ":" in ip else ip
        ports.append(f"{host}:{host_port}->{cport}")
    return ContainerRef(
        id=data["Id"],
        name=data.get("Name", data["Id"][:12]).lstrip("/"),
        status=data.get("State", {}).get("Status", "unknown"),
        image=data.get("Config", {}).get("Image", ""),
        service=(data.get("Config", {}).get("Labels") or {}).get(COMPOSE_SERVICE),
        ports=tuple(sorted(set(ports))),
    )


def publishes(item: dict[str, Any], port: int) -> bool:
    """True when a container (an item of ``GET /containers/json``) publishes container port ``port``/tcp."""
    return any(
        p.get("PrivatePort") == port and p.get("PublicPort") and p.get("Type", "tcp") == "tcp"
        for p in item.get("Ports") or []
    )


def _labels(label: str | Sequence[str]) -> list[str]:
    """One label or several, as a list without empty entries."""
    if isinstance(label, str):
        return [label] if label else []
    return [x for x in label if x]


def list_containers(label: str | Sequence[str] = "", *, include_stopped: bool = False) -> list[dict[str, Any]]:
    """``GET /containers/json``: running and paused containers (all with ``include_stopped``),
    only those carrying every label of ``label`` (one ``KEY[=VALUE]`` or several)."""
    labels = _labels(label)
    filters = {"label": labels} if labels else None
    items: list[dict[str, Any]] = _read(
        ("containers", tuple(labels), include_stopped),
        lambda: docker_call("list containers", lambda: api().containers(all=include_stopped, filters=filters)),
    )
    return sorted(items, key=lambda i: (i.get("Names") or [""])[0])


def _listing(refs: list[ContainerRef], empty: str = "none") -> str:
    if not refs:
        return empty
    shown = [r.show() for r in refs[:20]]
    if len(refs) > 20:
        shown.append(f"and {len(refs) - 20} more")
    return "; ".join(shown)


def label_text(label: str | Sequence[str]) -> str:
    """`` with label K=V`` (or ``labels A, B``) for messages; "" without labels."""
    labels = _labels(label)
    if not labels:
        return ""
    return f" with label{'s' if len(labels) > 1 else ''} {', '.join(labels)}"


def resolve_containers(spec: str, *, label: str | Sequence[str] = "", port: int = 25) -> list[ContainerRef]:
    """The containers a ``container`` parameter names. Runs in preflight; changes nothing.

    ``spec`` is one of:

    * a container name or id (any state);
    * ``auto``: the one running (or paused) container that publishes container
      port ``port``/tcp on the host; none or several raise BadInput listing the
      candidates;
    * ``all``: every running (or paused) container publishing ``port``/tcp
      (at least one);
    * ``service:NAME``: the one running (or paused) container whose
      ``com.docker.compose.service`` label is NAME (Mailu: ``service:smtp``).

    ``label`` (``key`` or ``key=value``, or several) narrows ``auto``, ``all``
    and ``service:`` to containers carrying those labels, e.g.
    ``com.docker.compose.project=mailu``.

    Raises BadInput (exit 2), Unavailable (5) or PrivilegeError (4).
    """
    spec = spec.strip()
    if spec in ("auto", "all"):
        return _publishing(spec, label, port)
    if spec.startswith("service:"):
        return _service(spec, label)
    if not spec:
        raise BadInput('container: empty; give a name or id, "auto", "all" or "service:NAME"')
    data = inspect_or_none(spec)
    if data is None:
        raise BadInput(
            f"no such container {spec!r}",
            ("check the name with `docker ps -a`, or use ", Setting("container", "auto"), " or ",
             Setting("container", "service:NAME")),
        )
    return [ref_from_inspect(data)]


def _publishing(spec: str, label: str | Sequence[str], port: int) -> list[ContainerRef]:
    """``auto`` / ``all``: the running containers publishing ``port``/tcp (``auto``: exactly one)."""
    where = label_text(label)
    items = list_containers(label)
    running = [_ref_from_list(i) for i in items]
    found = [_ref_from_list(i) for i in items if publishes(i, port)]
    if not found:
        raise BadInput(
            f'container = "{spec}": no running container{where} publishes port {port}/tcp; '
            f"running containers: {_listing(running)}",
            (
                "name the container: ",
                Setting("container", "NAME"),
                " (or ",
                Setting("container", "service:NAME"),
                " for Compose services)",
            ),
        )
    if spec == "auto" and len(found) > 1:
        raise BadInput(
            f'container = "auto": {len(found)} running containers{where} publish port {port}/tcp, '
            f"choose one: {_listing(found)}",
            (
                "set ",
                Setting("container", "NAME"),
                ", or ",
                Setting("container", "all"),
                " to act on every one of them",
            ),
        )
    return found


def _service(spec: str, label: str | Sequence[str]) -> list[ContainerRef]:
    """``service:NAME``: the one running container of that Compose service."""
    where = label_text(label)
    service = spec.removeprefix("service:").strip()
    if not service:
        raise BadInput('container = "service:": a Compose service name is needed, e.g. "service:smtp"')
    items = list_containers(label)
    running = [_ref_from_list(i) for i in items]
    found = [r for r in running if r.service == service]
    if not found:
        services = sorted({r.service for r in running if r.service})
        raise BadInput(
            f'container = "{spec}": no running container{where} has label {COMPOSE_SERVICE}={service}; '
            f"Compose services running: {', '.join(services) or 'none'}",
            "check the service name in docker-compose.yml (Mailu: front, smtp, imap, ...)",
        )
    if len(found) > 1:
        raise BadInput(
            f'container = "{spec}": {len(found)} running containers are service {service}, '
            f"choose one: {_listing(found)}",
            (
                "set ",
                Setting("container", "NAME"),
                ", or narrow with ",
                Setting("label", "com.docker.compose.project=PROJECT"),
            ),
        )
    return found


# ------------------------------------------------------------------ one container


def inspect(cid: str, name: str) -> dict[str, Any]:
    """``docker inspect``. ActionError if the container vanished."""
    data: dict[str, Any] = _read(
        ("inspect", cid), lambda: docker_call(f"inspect {name}", lambda: api().inspect_container(cid), vanished=name)
    )
    return data


def inspect_or_none(cid: str) -> dict[str, Any] | None:
    """``docker inspect``, or None when no such container exists (any other failure raises)."""
    try:
        data: dict[str, Any] = _read(
            ("inspect", cid), lambda: docker_call("inspect container", lambda: api().inspect_container(cid))
        )
    except BadInput:
        return None
    return data


def exists(cid: str) -> bool:
    """Whether a container with this id (or name) exists."""
    return inspect_or_none(cid) is not None


def pause(cid: str, name: str) -> None:
    docker_call(f"pause {name}", lambda: api().pause(cid), vanished=name)


def unpause(cid: str, name: str) -> None:
    docker_call(f"unpause {name}", lambda: api().unpause(cid), vanished=name)


def stop(cid: str, name: str, timeout: int) -> None:
    """``docker stop``: SIGTERM (or the image's stop signal), SIGKILL after ``timeout`` seconds."""
    docker_call(f"stop {name}", lambda: api().stop(cid, timeout=timeout), vanished=name)


def start(cid: str, name: str) -> None:
    docker_call(f"start {name}", lambda: api().start(cid), vanished=name)


def top(cid: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = docker_call(f"list processes of {name}", lambda: api().top(cid), vanished=name)
    return data


def diff(cid: str, name: str) -> list[dict[str, Any]]:
    data = docker_call(f"read the filesystem diff of {name}", lambda: api().diff(cid), vanished=name)
    return list(data or [])


def daemon_info() -> dict[str, Any]:
    data: dict[str, Any] = docker_call("read the daemon info", lambda: api().info())
    return data


def daemon_version() -> dict[str, Any]:
    data: dict[str, Any] = docker_call("read the daemon version", lambda: api().version())
    return data


def published_host_ports(data: dict[str, Any], container_ports: tuple[int, ...]) -> list[int]:
    """Host ports on which a container (its inspect ``data``) publishes any of ``container_ports``/tcp."""
    out: set[int] = set()
    for cport, bindings in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items():
        number, _, proto = str(cport).partition("/")
        if proto not in ("", "tcp") or not number.isdigit() or int(number) not in container_ports:
            continue
        for b in bindings or []:
            host_port = str((b or {}).get("HostPort") or "")
            if host_port.isdigit() and 0 < int(host_port) < 65536:
                out.add(int(host_port))
    return sorted(out)


def _inspect_network(net_id: str, net_name: str, container: str) -> dict[str, Any]:
    data: dict[str, Any] = docker_call(
        f"inspect network {net_name} of {container}", lambda: api().inspect_network(net_id), vanished=net_name
    )
    return data


def container_subnets(data: dict[str, Any], name: str) -> list[str]:
    """Subnets (CIDR, IPv4 and IPv6) of every network a container (its inspect ``data``) is on.

    Read from each network's IPAM config (``GET /networks/ID``), so the whole
    subnet counts, not only the container's own address: Postfix relays from
    whatever address it has after a restart. A container on the host's
    network (``--network host``) has none. ActionError if a network vanished.
    """
    subnets: set[str] = set()
    for net_name, info in sorted(((data.get("NetworkSettings") or {}).get("Networks") or {}).items()):
        net = _inspect_network(str((info or {}).get("NetworkID") or net_name), net_name, name)
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            subnet = (cfg or {}).get("Subnet") if isinstance(cfg, dict) else None
            if isinstance(subnet, str):
                try:
                    subnets.add(str(ipaddress.ip_network(subnet, strict=False)))
                except ValueError:
                    continue
    return sorted(subnets)


# ------------------------------------------------------------------ exec


class ExecStream:
    """The merged stdout+stderr of a command run with ``docker exec``.

    Iterate for the output chunks (not aligned to lines), then read
    ``exit_code``. Nothing is held in memory beyond one chunk.
    """

    def __init__(self, cid: str, name: str, cmd: list[str], *, user: str = "") -> None:
        self.name = name
        self.cmd = cmd
        self.doing = f"run {cmd[0]} in {name}"
        created = docker_call(
            self.doing,
            lambda: api().exec_create(cid, cmd, stdout=True, stderr=True, tty=False, user=user),
            vanished=name,
        )
        self._exec_id: str = created["Id"]
        self._exit: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        chunks = docker_call(self.doing, lambda: api().exec_start(self._exec_id, stream=True), vanished=self.name)
        for chunk in _guard_stream(self.doing, iter(chunks), self.name):
            if chunk:
                yield chunk

    @property
    def exit_code(self) -> int:
        if self._exit is None:
            data = docker_call(self.doing, lambda: api().exec_inspect(self._exec_id), vanished=self.name)
            code = data.get("ExitCode")
            self._exit = -1 if code is None else int(code)
        return self._exit


def exec_output(cid: str, name: str, cmd: list[str], *, limit: int = 64 << 20) -> tuple[int, bytes]:
    """Run ``cmd`` and return (exit code, merged output). ActionError past ``limit`` bytes."""
    stream = ExecStream(cid, name, cmd)
    parts: list[bytes] = []
    size = 0
    for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise ActionError(f"{cmd[0]} in {name} printed more than {limit >> 20} MiB")
        parts.append(chunk)
    return stream.exit_code, b"".join(parts)


# ------------------------------------------------------------------ logs


class _Demux:
    """Strip Docker's 8-byte stream headers from a non-TTY attach/logs stream.

    Each frame is ``[stream, 0, 0, 0, size (4 bytes, big endian)]`` followed
    by ``size`` bytes. Frames may be split anywhere across chunks; only the
    header bytes seen so far and the bytes left of the current frame are kept.
    """

    def __init__(self) -> None:
        self._header = b""
        self._left = 0

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        view = memoryview(data)
        i, n = 0, len(view)
        unpack = struct.Struct(">BxxxL").unpack_from
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                out.append(view[i : i + take].tobytes())
                i += take
                self._left -= take
            elif not self._header and i + 8 <= n:
                _, self._left = unpack(view, i)
                i += 8
            else:
                need = 8 - len(self._header)
                self._header += view[i : i + need].tobytes()
                i += min(need, n - i)
                if len(self._header) == 8:
                    _, self._left = unpack(self._header)
                    self._header = b""
        return b"".join(out)

    @property
    def complete(self) -> bool:
        return not self._header and not self._left


def logs_stream(
    cid: str, name: str, *, since: float | None = None, timestamps: bool = True, tty: bool = False
) -> Iterator[bytes]:
    """``docker logs`` of a container (stdout and stderr merged), as byte chunks.

    Reads the daemon's answer in chunks of up to ``CHUNK`` bytes and strips
    the stream headers itself (docker-py's generator makes two reads per log
    line, which is several times slower on big logs). Chunks are not aligned
    to lines. Works on running, paused and stopped containers whose log
    driver can be read back (json-file, local, journald, or any driver with
    the daemon's dual-logging cache).
    """
    import docker
    import requests

    client_api = api()
    params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": int(timestamps), "follow": 0, "tail": "all"}
    if since is not None and since > 0:
        params["since"] = f"{since:.9f}".rstrip("0").rstrip(".")
    url = f"{client_api.base_url}/v{client_api.api_version}/containers/{urllib.parse.quote(cid, safe='')}/logs"
    doing = f"read the logs of {name}"

    def open_stream() -> Any:
        response = client_api.get(url, params=params, stream=True, timeout=(30, 600))
        try:
            response.raise_for_status()
        except requests.exceptions.HTTPError as exc:
            response.close()
            raise docker.errors.create_api_error_from_http_exception(exc) from None
        return response

    response = docker_call(doing, open_stream, vanished=name)

    def chunks() -> Iterator[bytes]:
        try:
            demux = None if tty else _Demux()
            raw = response.raw
            while True:
                data = raw.read(CHUNK, decode_content=False)
                if not data:
                    break
                out = data if demux is None else demux.feed(data)
                if out:
                    yield out
            if demux is not None and not demux.complete:
                raise Unavailable(
                    f"cannot {doing}: the log stream ended in the middle of a record",
                    "check that dockerd is still running, then run the step again",
                )
        finally:
            response.close()

    return _guard_stream(doing, chunks(), name)


# ------------------------------------------------------------------ archive


def get_archive(cid: str, name: str, path: str) -> tuple[Iterator[bytes], dict[str, Any]] | None:
    """A tar stream of ``path`` in the container and its stat, or None if the path does not exist.

    Uses the archive API, which works on running, paused and stopped
    containers. ActionError if the container itself is gone.
    """
    import docker

    doing = f"copy {path} from {name}"

    def call() -> tuple[Iterator[bytes], dict[str, Any]] | None:
        try:
            bits, stat = api().get_archive(cid, path, chunk_size=CHUNK, encode_stream=False)
        except docker.errors.NotFound:
            return None
        return bits, dict(stat or {})

    result = docker_call(doing, call, vanished=name)
    if result is None:
        if exists(cid):
            return None  # the container is there: the path is what is missing
        raise _translate(docker.errors.NotFound("no such container"), doing, name)
    bits, stat = result
    return _guard_stream(doing, iter(bits), name), stat


# ------------------------------------------------------------------ follow (lockdown watch)


class LogFollower:
    """``docker logs --follow --timestamps`` of one container, as byte chunks not aligned to lines.

    Iterating blocks until the container writes; it ends when the container
    stops or the daemon goes away. ``close()`` from another thread ends it
    early. Opening raises BadInput (no such container), Unavailable or
    PrivilegeError; reading raises Unavailable when the connection breaks.
    """

    def __init__(self, cid: str, name: str, *, since: float | None = None) -> None:
        self.doing = f"follow the logs of {name}"
        kwargs: dict[str, Any] = {"stream": True, "follow": True, "timestamps": True, "stdout": True, "stderr": True}
        if since:
            kwargs["since"] = since
        self._stream: Any = docker_call(self.doing, lambda: api().logs(cid, **kwargs))

    def __iter__(self) -> Iterator[bytes]:
        import docker
        import requests
        import urllib3

        try:
            yield from self._stream
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise _translate(exc, self.doing) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise Unavailable(f"cannot {self.doing}: the connection to the Docker daemon broke ({exc})") from None

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001 - closing a stream that may already be broken
            pass


def networks() -> list[dict[str, Any]]:
    """``GET /networks``: every network with its IPAM config (subnets, gateways)."""
    nets = _read(("networks",), lambda: docker_call("list Docker networks", lambda: api().networks()))
    return [n for n in nets or [] if isinstance(n, dict)]


def network_gateways(networks: list[Any] | None = None) -> list[str]:
    """The gateway addresses of every Docker network (``networks`` as ``GET /networks`` gives
    them, else asked through the SDK), e.g. ``["172.17.0.1"]``; a network whose IPAM config
    names no gateway counts its subnet's first address, as Docker gives it."""
    if networks is None:
        networks = docker_call("list Docker networks", lambda: api().networks())
    out: set[str] = set()
    for net in networks or []:
        if isinstance(net, dict) and isinstance(net.get("IPAM"), dict):
            out.update(gateways_from_ipam(net["IPAM"]))
    return sorted(out)


def gateways_from_ipam(ipam: dict[str, Any]) -> list[str]:
    """Gateway addresses of a network's IPAM config (first host of the subnet when unset)."""
    out: list[str] = []
    for cfg in ipam.get("Config") or []:
        if not isinstance(cfg, dict):
            continue
        gw = cfg.get("Gateway")
        if isinstance(gw, str) and gw:
            out.append(gw.split("/")[0])
            continue
        subnet = cfg.get("Subnet")
        if isinstance(subnet, str) and subnet:
            try:
                out.append(str(next(ipaddress.ip_network(subnet, strict=False).hosts())))
            except (ValueError, StopIteration):
                continue
    return out


def networks_via_socket() -> tuple[bool, list[Any] | None]:
    """``GET /networks`` straight over the daemon's Unix socket: (reachable, networks).

    Importing the Docker SDK alone takes about a tenth of a second, as long as a report on a
    small log. Not reachable when the socket cannot be connected to (no daemon, a stale
    socket file, no permission): the SDK could not do better, so it is not imported. The
    networks are None when ``DOCKER_HOST`` is not a Unix socket or the answer is not a plain
    ``200`` with a JSON list: the SDK is asked then, and its errors are the ones reported.
    """
    address = daemon_address()
    if not address.startswith("unix://"):
        return True, None
    import json
    import socket

    parts: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        try:
            sock.connect(address[len("unix://") :])
        except OSError:
            return False, None
        try:
            sock.sendall(b"GET /networks HTTP/1.0\r\nHost: docker\r\n\r\n")
            while chunk := sock.recv(1 << 16):
                parts.append(chunk)
        except OSError:
            return True, None
    head, sep, body = b"".join(parts).partition(b"\r\n\r\n")
    if not sep or not head.startswith((b"HTTP/1.0 200 ", b"HTTP/1.1 200 ")) or b"chunked" in head.lower():
        return True, None
    try:
        doc = json.loads(body)
    except ValueError:
        return True, None
    return True, (doc if isinstance(doc, list) else None)


# ------------------------------------------------------------------ events (lockdown guard)

#: Compose's project label; with COMPOSE_SERVICE it names "the same container" across a recreate.
COMPOSE_PROJECT = "com.docker.compose.project"
#: Container actions after which a paused container may be running again.
RESUME_ACTIONS = ("start", "unpause", "restart", "create")


@dataclass(frozen=True)
class DockerEvent:
    """One container event, ``lost`` (the daemon went away; ``reason`` says how) or ``resync``
    (the stream was (re)opened: compare again; ``reason`` is ``start`` or how long it was away).

    ``attributes`` are the actor's attributes as Docker sends them: the
    container's name, image and labels (compose project/service included).
    ``time`` is the daemon's timestamp of the event (seconds, from timeNano).
    """

    action: str
    id: str
    time: float
    attributes: dict[str, str]
    reason: str = ""

    @property
    def name(self) -> str:
        return self.attributes.get("name") or self.id[:12]

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "id": self.id, "time": self.time, "attributes": dict(self.attributes)}


class DockerEvents:
    """``docker events`` for containers (start, unpause, restart, create), reconnecting.

    The first event is a ``resync``. When the stream breaks or the daemon
    cannot be reached (it restarted, its socket went away) one ``lost`` event
    says why; connecting is retried after ``retry`` seconds, doubling up to
    ``max_retry`` (a daemon away for long costs a connect attempt every few
    seconds, not a busy loop). Once connected again the stream is reopened with
    ``since`` the last event seen, so nothing in between is lost, and another
    ``resync`` (its reason says how long Docker was away) tells the consumer to
    compare again. ``close()`` from another thread ends the iteration.
    """

    def __init__(
        self, actions: tuple[str, ...] = RESUME_ACTIONS, *, retry: float = 0.25, max_retry: float = 5.0
    ) -> None:
        self.filters = {"type": "container", "event": list(actions)}
        self.retry = retry
        self.max_retry = max_retry
        self._stop = threading.Event()
        self._stream: Any = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a stream that may already be broken
                pass

    def _connect(self, since: float | None) -> Any:
        kwargs: dict[str, Any] = {"decode": True, "filters": self.filters}
        if since is not None:
            kwargs["since"] = since
        stream = docker_call("follow Docker events", lambda: api().events(**kwargs))
        with self._lock:
            self._stream = stream
        return stream

    def __iter__(self) -> Iterator[DockerEvent]:
        import time

        since: float | None = None
        lost_at: float | None = None  # when the current outage began
        delay = self.retry
        while not self._stop.is_set():
            try:
                stream = self._connect(since)
            except (Unavailable, ActionError) as exc:
                if lost_at is None:  # once per outage, not once per attempt
                    lost_at = time.time()
                    yield DockerEvent("lost", "", lost_at, {}, exc.message)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_retry)
                continue
            now = time.time()
            reason = "start" if lost_at is None and since is None else (
                f"reconnected to Docker after {now - (lost_at or now):.1f} s away"
            )
            yield DockerEvent("resync", "", now, {}, reason)
            lost_at, delay = None, self.retry
            since, why = yield from self._follow(stream, since)
            if not self._stop.is_set():
                lost_at = time.time()
                yield DockerEvent("lost", "", lost_at, {}, why)
                self._stop.wait(delay)

    def _follow(self, stream: Any, since: float | None) -> Generator[DockerEvent, None, tuple[float | None, str]]:
        """Yield the stream's events until it ends; return the last event's time and why it ended."""
        try:
            for raw in stream:
                event = _docker_event(raw)
                if event is not None:
                    since = event.time
                    yield event
            why = "the event stream ended (daemon restarted?)"
        except Exception as exc:  # noqa: BLE001 - any break of the stream means: reconnect
            why = f"the event stream broke ({type(exc).__name__})"
        finally:
            with self._lock:
                self._stream = None
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass
        return since, why


def _docker_event(raw: Any) -> DockerEvent | None:
    if not isinstance(raw, dict) or raw.get("Type", "container") != "container":
        return None
    actor = raw.get("Actor") or {}
    cid = str(actor.get("ID") or raw.get("id") or "")
    action = str(raw.get("Action") or raw.get("status") or "")
    if not cid or not action:
        return None
    nano = raw.get("timeNano")
    when = int(nano) / 1e9 if isinstance(nano, int) else float(raw.get("time") or 0)
    attrs = actor.get("Attributes") or {}
    return DockerEvent(action, cid, when, {str(k): str(v) for k, v in attrs.items()})


def compose_identity(labels: dict[str, str] | None) -> tuple[str, str] | None:
    """(project, service) from a container's labels, or None when Compose did not create it."""
    labels = labels or {}
    project, service = labels.get(COMPOSE_PROJECT), labels.get(COMPOSE_SERVICE)
    return (project, service) if project and service else None


def past_labels(cid: str, since: float) -> dict[str, str] | None:
    """The labels of a container that may be gone, from the daemon's event log since ``since``.

    Docker keeps recent events; a destroyed container's events still carry
    its labels. None when no event of it is found.
    """
    import time

    def read() -> dict[str, str] | None:
        stream = api().events(since=since, until=time.time(), decode=True, filters={"container": cid})
        found = None
        for raw in stream:
            event = _docker_event(raw)
            if event is not None and event.attributes:
                found = event.attributes
        return found

    return docker_call(f"read past events of container {cid[:12]}", read)
