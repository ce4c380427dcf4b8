"""``lockdown audit``: is this host an open relay over IPv6 right now?

Both postmortems had the same chain: a mail port published on every address,
docker-proxy forwarding IPv6 clients into an IPv4-only container (so Postfix
sees them as the bridge gateway), and Postfix trusting the Docker network.
Each link of that chain is one check, and the chain as a whole is the
``ipv6-relay-path`` finding. ``probe()`` is the definitive test: it asks the
server itself, over the host's own IPv6 addresses.

The package, each module only looking down the list:

* ``findings``: Finding, AuditResult (the ``--json`` document), merge;
* ``facts``: the host's addresses (netlink), dockerd's configuration, the firewall dump;
* ``containers``: the containers, their bindings and networks (dockerapi);
* ``postfix``: ``postconf`` in a container and Postfix's matchlist rule;
* ``stackfix``: each fix in the recognised stack's terms (file, setting, check command);
* ``checks``: the Auditor and ``audit()``;
* ``probe``: the SMTP probe.

Everything only READS the host: the Docker API (inspect, networks, logs, and
``postconf`` run through ``docker exec``), processes and sockets through
lockdown.hostfacts, /etc/docker/daemon.json, /etc/ufw/ufw.conf,
``iptables-save`` (a dump, never a change) and the kernel's address list.
The probe never sends DATA, so no mail is ever accepted.

The mail stack of each container (lockdown.stacks) is recognised from the
same inspect documents; ``AuditResult.stacks`` names them.

Finding ids are an interface (``--json``, docs/audit.md): keep them stable.
"""

from lockdown.audit.checks import AuditOptions, Auditor, audit
from lockdown.audit.facts import DaemonConfig, daemon_config
from lockdown.audit.findings import SEVERITIES, AuditResult, Finding, merge
from lockdown.audit.postfix import parse_matchlist, trusted_by
from lockdown.audit.probe import probe, probe_targets
from lockdown.hostfacts import ProxyProcess, parse_proxy_cmdline

__all__ = [
    "SEVERITIES",
    "AuditOptions",
    "AuditResult",
    "Auditor",
    "DaemonConfig",
    "Finding",
    "ProxyProcess",
    "audit",
    "daemon_config",
    "merge",
    "parse_matchlist",
    "parse_proxy_cmdline",
    "probe",
    "probe_targets",
    "trusted_by",
]
