"""``logs.files``: copy log files and directories from the container and the host into evidence."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from lockdown import dockerapi
from lockdown.actions.base import ParamError, StepContext, UndoRecord
from lockdown.actions.containers import ContainerAction, ContainerParams
from lockdown.errors import ActionError

#: Postfix logs in docker-mailserver (/var/log/mail/mail.log) and in plain Debian images.
DEFAULT_PATHS = ["/var/log/mail/", "/var/log/mail.log"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")


def evidence_name(path: str) -> str:
    """``/var/log/mail/`` -> ``var/log/mail``: a relative evidence name with safe components.

    Characters outside ``[A-Za-z0-9._@+=-]`` become ``_``; a component that
    does not start with a letter or digit (``.hidden``) gets an ``x`` prefix.
    The index file maps every evidence name back to the original path.
    """
    parts = []
    for part in path.strip("/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            part = "dotdot"
        part = _UNSAFE.sub("_", part)
        if not part[0].isalnum():
            part = "x" + part
        parts.append(part)
    return "/".join(parts) or "root"


def _check_paths(key: str, paths: list[str]) -> None:
    for i, p in enumerate(paths):
        if not p.startswith("/") or "\0" in p:
            raise ParamError(f"{key}[{i}]", f"expected an absolute path, got {p!r}")


@dataclass(frozen=True)
class Params(ContainerParams):
    paths: list[str] = field(default_factory=lambda: list(DEFAULT_PATHS))
    host_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_paths("paths", self.paths)
        _check_paths("host_paths", self.host_paths)


class LogsFiles(ContainerAction[Params]):
    """Copy files and directories from the container (archive API) and the host into evidence.

    Container paths are fetched with Docker's archive API (``docker cp``),
    which also works while the container is paused, and streamed unchanged
    to ``files/<container>/<path>.tar``: a tar keeps owners, modes and
    mtimes, and nothing from the container is ever unpacked on the host.
    Host paths are copied file by file, streaming, to ``files/host/<path>``
    (symlinks inside directories are listed, not followed). Each side gets
    an index (``files/<container>/index.json``, ``files/host-index.json``)
    mapping paths to evidence files with size and SHA-256. Paths that do
    not exist are listed in the notes and the index; they are not an error.

    Parameters:
      {ContainerParams}
      paths: absolute paths in the container; a trailing slash is only
        cosmetic (default: "/var/log/mail/" for docker-mailserver and
        "/var/log/mail.log" for plain Debian Postfix). With container =
        "stack", the stack's own log files come first.
      host_paths: absolute paths on the host (files or directories).

    Example::

        [[steps]]
        id = "mail-logs"
        action = "logs.files"
        container = "mailserver"
        paths = ["/var/log/mail/", "/etc/postfix/main.cf"]
        host_paths = ["/var/log/syslog"]
    """

    name = "logs.files"
    Params = Params
    container_note = 'Also "none": copy host paths only.'

    def describe(self) -> str:
        parts = []
        if self.params.container != "none" and self.params.paths:
            parts.append(
                f"{', '.join(self.params.paths)} from {self.params.target_text()}"
            )
        if self.params.host_paths:
            parts.append(f"{', '.join(self.params.host_paths)} from the host")
        return "copy " + (" and ".join(parts) or "nothing")

    def preflight(self) -> None:
        if self.params.container != "none" and self.params.paths:
            self.resolve()

    def apply(self, ctx: StepContext, undo: UndoRecord | None) -> None:
        missing: list[str] = []
        copied = 0
        if self.params.container != "none" and self.params.paths:
            for ref in self.resolve():
                n, gone = self._from_container(ctx, ref)
                copied += n
                missing += [f"{ref.name}:{p}" for p in gone]
        if self.params.host_paths:
            n, gone = self._from_host(ctx)
            copied += n
            missing += [f"host:{p}" for p in gone]
        ctx.result["missing"] = missing
        if missing:
            ctx.note(f"not found (skipped): {', '.join(missing)}")
        if not copied:
            ctx.note("nothing was copied")

    # ------------------------------------------------------------ container

    def container_paths(self) -> list[str]:
        """``paths``, preceded by the recognised stack's own log files (container = "stack")."""
        stack_files = list(self.stack.kind.log_files) if self.stack is not None else []
        return list(dict.fromkeys(stack_files + list(self.params.paths)))

    def resolved(self) -> dict[str, Any]:
        if self.params.container == "none":
            return {}
        out = super().resolved()
        if self.stack is not None:
            out["paths"] = self.container_paths()
        return out

    def _from_container(self, ctx: StepContext, ref: dockerapi.ContainerRef) -> tuple[int, list[str]]:
        index: dict[str, Any] = {}
        missing = []
        paths = self.container_paths()
        for path in paths:
            found = dockerapi.get_archive(ref.id, ref.name, path)
            if found is None:
                missing.append(path)
                index[path] = {"missing": True}
                continue
            chunks, pstat = found
            with ctx.open_evidence(f"files/{ref.name}/{evidence_name(path)}.tar") as fh:
                for chunk in chunks:
                    fh.write(chunk)
            entry = ctx.evidence.entries[-1]
            index[path] = {"evidence": entry.path, "tar_bytes": entry.size, "sha256": entry.sha256, "stat": pstat}
            link = pstat.get("linkTarget")
            what = f"symlink to {link}" if link else ("directory" if pstat.get("mode", 0) & (1 << 31) else "file")
            ctx.note(f"{ref.name}:{path} ({what}) -> {entry.path} ({entry.size} bytes of tar)")
        ctx.write_json(f"files/{ref.name}/index.json", {"container": ref.name, "id": ref.id, "paths": index})
        return len(paths) - len(missing), missing

    # ------------------------------------------------------------ host

    def _from_host(self, ctx: StepContext) -> tuple[int, list[str]]:
        index: dict[str, Any] = {}
        missing = []
        copied = 0
        for path in self.params.host_paths:
            try:
                st = os.stat(path)  # the operator named it: a top-level symlink is followed
            except FileNotFoundError:
                missing.append(path)
                index[path] = {"missing": True}
                continue
            except OSError as exc:
                raise ActionError(f"cannot read host path {path}: {exc.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                files = 0
                for root, dirs, names in os.walk(path):
                    dirs.sort()
                    for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                        full = os.path.join(root, name)
                        index[full] = _copy_host_file(ctx, full)
                        files += "evidence" in index[full]
                    dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
                ctx.note(f"host:{path} (directory, {files} file(s)) -> evidence/files/host/{evidence_name(path)}/")
                copied += 1
            else:
                index[path] = _copy_host_file(ctx, path, follow=True)
                if "evidence" in index[path]:
                    ctx.note(f"host:{path} -> {index[path]['evidence']} ({index[path]['size']} bytes)")
                    copied += 1
        ctx.write_json("files/host-index.json", {"paths": index})
        return copied, missing


def _copy_host_file(ctx: StepContext, path: str, *, follow: bool = False) -> dict[str, Any]:
    """Stream one host file into ``files/host/<path>``; describe anything that is not a regular file."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW) | os.O_NONBLOCK
    try:
        st = os.stat(path, follow_symlinks=follow)
        if stat.S_ISLNK(st.st_mode):
            return {"symlink": os.readlink(path), "mode": oct(st.st_mode)}
        if not stat.S_ISREG(st.st_mode):
            return {"skipped": "not a regular file", "mode": oct(st.st_mode)}
        fd = os.open(path, flags)
    except FileNotFoundError:
        return {"missing": True}
    except OSError as exc:
        return {"error": exc.strerror or str(exc)}
    meta = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime}
    try:
        with ctx.open_evidence(f"files/host/{evidence_name(path)}") as fh:
            while True:
                chunk = os.read(fd, dockerapi.CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
    finally:
        os.close(fd)
    entry = ctx.evidence.entries[-1]
    return {"evidence": entry.path, "size": entry.size, "sha256": entry.sha256, **meta}
