"""Fixes in each stack's own terms: the file, the exact line or setting, and a command that checks it.

The same finding (a port published on every address, docker-proxy in the
path, the gateway trusted) is fixed in a different file on each stack:
mailcow's ``mailcow.conf`` port variables (its docker-compose.yml publishes
``${SMTP_PORT:-25}:25``, so ``SMTP_PORT=203.0.113.5:25`` binds one address),
docker-mailserver's ``compose.yaml`` and ``mailserver.env`` (``PERMIT_DOCKER``),
Mailu's generated ``docker-compose.yml`` (the front's ports, written from
BIND_ADDRESS4 by Mailu's setup) and ``mailu.env`` (``SUBNET``), or a plain
Postfix's ``main.cf`` (``mynetworks``). What is written here comes from the
stacks' documentation and compose files as of 2025 (docs/stacks.md lists the
sources); the audit's ``fix`` keeps its one-line text, and these add the
structured ``stack``/``file``/``setting``/``check`` fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from lockdown.stacks import DMS, MAILCOW, MAILU, POSTFIX, Stack

#: mailcow.conf variables publishing each container port (docker-compose.yml: "${SMTP_PORT:-25}:25", ...).
MAILCOW_PORT_VARS = {
    25: "SMTP_PORT",
    465: "SMTPS_PORT",
    587: "SUBMISSION_PORT",
    143: "IMAP_PORT",
    993: "IMAPS_PORT",
    110: "POP_PORT",
    995: "POPS_PORT",
    4190: "SIEVE_PORT",
}
#: Where each stack's compose file publishes its mail ports.
COMPOSE_FILE = {
    DMS: "compose.yaml (docker-mailserver's example; docker-compose.yml in older setups)",
    MAILU: "docker-compose.yml as Mailu's setup utility wrote it (from BIND_ADDRESS4)",
    POSTFIX: "your docker-compose.yml (or the `docker run -p` flag)",
}
#: Where an admin overrides Postfix's main.cf on each stack.
MAIN_CF = {
    MAILCOW: "data/conf/postfix/extra.cf (mailcow reads it after main.cf; do not edit main.cf itself)",
    DMS: "docker-data/dms/config/postfix-main.cf (merged into main.cf at start)",
    MAILU: "overrides/postfix/postfix.cf (Mailu merges it into main.cf)",
    POSTFIX: "/etc/postfix/main.cf in the container (or the image/volume it comes from)",
}


@dataclass(frozen=True)
class StackFix:
    """The structured half of a finding's fix."""

    stack: str
    file: str
    setting: str
    check: str
    text: str = ""  # a stack-specific replacement for the generic fix text, when there is one


def publish(stack: Stack | None, name: str, service: str, host_port: int, cport: int, v4: str) -> StackFix:
    """A mail port published on every address: bind it to one IPv4 address, the stack's way."""
    kind = stack.kind.name if stack else POSTFIX
    check = f"docker port {name} {cport}/tcp   # must print only {v4}:{host_port}"
    if kind == MAILCOW:
        var = MAILCOW_PORT_VARS.get(cport, "SMTP_PORT")
        setting = f"{var}={v4}:{host_port}"
        return StackFix(
            kind,
            "mailcow.conf (in the mailcow-dockerized directory)",
            setting,
            check + "; grep -E '^(SMTP|SMTPS|SUBMISSION)_PORT=' mailcow.conf",
            f"mailcow.conf: `{setting}` (was `{var}={host_port}`; docker-compose.yml publishes "
            f"`${{{var}:-{cport}}}:{cport}`), likewise SMTPS_PORT and SUBMISSION_PORT; then `docker compose up -d`",
        )
    line = f'"{v4}:{host_port}:{cport}"'
    where = COMPOSE_FILE[kind]
    svc = f", service {service}" if service else ""
    text = (
        f'{where}{svc}: ports: - {line} instead of "{host_port}:{cport}"; then `docker compose up -d`'
        if kind in (DMS, MAILU)
        else ""
    )
    return StackFix(kind, where + svc, f"ports: - {line}", check, text)


def daemon_version_note(version: str) -> str:
    """What ``"userland-proxy": false`` implies for IPv6 on this Docker version."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major >= 27:
        return (
            f"on Docker {version} ip6tables is on by default: without the proxy an IPv4-only network's ports are "
            "not reachable over IPv6 at all (refused, no longer arriving as the gateway); to serve IPv6 "
            "clients with their own address give the network an IPv6 subnet (enable_ipv6: true)"
        )
    return (
        f"on Docker {version or 'of unknown version'} (before 27.0) IPv6 NAT needs \"ipv6\": true and "
        '"ip6tables": true (with "experimental": true before 27.0); without them and without the proxy '
        "IPv6 clients cannot reach the published ports at all, which closes the relay path"
    )


def userland_proxy(stack: Stack | None, daemon_path: str, version: str) -> StackFix:
    """docker-proxy in the path: turn it off (dockerd restart), with what that means for IPv6 here."""
    kind = stack.kind.name if stack else POSTFIX
    extra = {
        MAILU: "; Mailu's documentation requires it before enabling IPv6",
        MAILCOW: "; this is the fix mailcow's issue #5242 settled on (also set ENABLE_IPV6 in mailcow.conf "
        "only with a working IPv6 network)",
        DMS: "; docker-mailserver's docs recommend it with PERMIT_DOCKER=none",
    }.get(kind, "")
    return StackFix(
        kind,
        daemon_path,
        '"userland-proxy": false',
        "systemctl restart docker; ps -C docker-proxy -o args= | grep -- '-container-port 25'   "
        "# must print nothing",
        f'{daemon_path}: `"userland-proxy": false`, then `systemctl restart docker` '
        f"({daemon_version_note(version)}){extra}",
    )


def trusts_gateway(stack: Stack | None, name: str, gateway: str, value: str, keep: str) -> StackFix:
    """Postfix's mynetworks (``value``) holds the gateway: where to override it on this stack.

    ``keep``: the entries that do not cover the gateway (the generic fix's line).
    """
    kind = stack.kind.name if stack else POSTFIX
    check = f"docker exec {name} postconf -h mynetworks   # must not cover {gateway}"
    if kind == MAILCOW:
        setting = f"mynetworks = !{gateway} {value}"
        return StackFix(
            kind,
            MAIN_CF[kind],
            setting,
            check + f"; docker exec {name} postconf -h mynetworks | grep -F '!{gateway}'",
            f"{MAIN_CF[kind].split(' ')[0]}: `{setting}` (mailcow's own containers relay from IPV4_NETWORK, "
            "so exclude the gateway first instead of dropping the subnet; the first match decides), then "
            f"`docker compose restart postfix-mailcow`",
        )
    if kind == DMS:
        return StackFix(kind, "mailserver.env", "PERMIT_DOCKER=none", check + "; grep PERMIT_DOCKER mailserver.env")
    return StackFix(kind, MAIN_CF[kind], f"mynetworks = {keep}", check)


def permit_docker(stack: Stack | None, name: str) -> StackFix:
    return StackFix(
        stack.kind.name if stack else DMS,
        "mailserver.env",
        "PERMIT_DOCKER=none",
        f"grep PERMIT_DOCKER mailserver.env; docker exec {name} postconf -h mynetworks   "
        "# must not contain 172.16.0.0/12",
    )


def mailu_var(stack: Stack | None, name: str, var: str, front: str) -> StackFix:
    """Mailu's SUBNET (keep it, close the path) or RELAYNETS (drop the gateway's network)."""
    kind = stack.kind.name if stack else MAILU
    if var == "SUBNET":
        return StackFix(
            kind,
            "mailu.env and " + COMPOSE_FILE[MAILU],
            "SUBNET stays the Mailu network; front ports: - \"BIND_ADDRESS4:25:25\"",
            f"docker port {front} 25/tcp   # must print only the IPv4 address; "
            f"docker exec {name} postconf -h mynetworks",
        )
    return StackFix(
        kind, "mailu.env", "RELAYNETS= (without the gateway's network)", f"docker exec {name} postconf -h mynetworks"
    )


def relay_path(stack: Stack | None, v4: str, daemon_path: str) -> StackFix:
    """The whole chain: the one-line summary of the stack's knob."""
    kind = stack.kind.name if stack else POSTFIX
    title = stack.kind.title if stack else "plain Postfix"
    knob = stack.kind.knob if stack else "mynetworks in main.cf"
    return StackFix(
        kind,
        daemon_path,
        '"userland-proxy": false',
        "lockdown audit --probe   # must report probe-closed",
        f"{title}: {knob}",
    )
