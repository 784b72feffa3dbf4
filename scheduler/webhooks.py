"""Webhook URLs: their shape (a job file's ``notify.webhook``, a team's webhook) and
the destinations the control plane may send to (the cluster config's
``notifications``).

A webhook URL is chosen by a user who may be hostile, and the request leaves from
the control plane's host, inside its network. So only http and https, no
credentials in the URL, and by default only public addresses: loopback, link-local
(169.254.169.254, the cloud metadata service), private and reserved addresses are
refused unless an mlq admin lists their network. The sender resolves the host, checks
every address it resolves to, and connects to the address it checked
(``daemon/notify.py``), so a name cannot be switched to an inner address between the
check and the connect. No I/O here: the checks take the addresses they judge.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL = 2048
EVENTS = ("end", "preempt")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")  # no spaces, no control characters, ASCII
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_url(url: object) -> str:
    """The URL, if it is one mlq sends to; else ValueError saying what is allowed (the
    caller names the field)."""
    if not isinstance(url, str):
        raise ValueError("is not a URL; use an http:// or https:// URL")
    if len(url) > MAX_URL:
        raise ValueError(f"is {len(url)} characters long; a webhook URL has at most {MAX_URL}")
    if not _PRINTABLE.match(url):
        raise ValueError("has spaces or characters outside ASCII; percent-encode them")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parses the port: ValueError when it is not one)
    except ValueError:
        raise ValueError(f'"{shown(url)}" is not a URL; use https://host/path') from None
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f'scheme "{parts.scheme}"' if parts.scheme else "no scheme"
        raise ValueError(f"has {scheme}; a webhook is an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError(
            "holds credentials (user:password@); put a token in the path or query, as "
            "Slack's and Mattermost's webhook URLs do"
        )
    if not parts.hostname:
        raise ValueError("names no host; use https://host/path")
    return url


def shown(url: str) -> str:
    """What a log line or another user may see of a webhook: its scheme, host and
    port. The path and query often hold the secret (Slack's do)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<not a URL>"
    if ":" in host:
        host = f"[{host}]"
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{rest}"


def _host_matches(host: str, pattern: str) -> bool:
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


@dataclass(frozen=True)
class Rules:
    """Where webhooks may go. ``hosts``: when any, the only hosts a webhook may name
    (``*.example.com`` matches its subdomains); ``networks``: addresses outside the
    public internet that webhooks may reach (none by default)."""

    hosts: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    def host_problem(self, host: str) -> str | None:
        if self.hosts and not any(_host_matches(host, p) for p in self.hosts):
            return (
                f"host {host} is not one this cluster sends webhooks to (the cluster "
                f"config's notifications.hosts: {', '.join(self.hosts)})"
            )
        return None

    def address_problem(self, address: str) -> str | None:
        """Why this resolved address may not be reached, or None."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in n for n in self.networks):
            return None
        if ip.is_global and not ip.is_multicast:
            return None
        return (
            f"{ip} is not a public address (loopback, link-local such as the metadata "
            "service 169.254.169.254, private or reserved); an mlq admin may allow its "
            "network in the cluster config's notifications.networks"
        )

    def url_problem(self, url: str) -> str | None:
        """What can be judged without resolving the host: the allowed hosts, and a
        host written as an IP address. A name is judged again, on every address it
        resolves to, when a notification is sent."""
        host = urlsplit(url).hostname or ""
        problem = self.host_problem(host)
        if problem is None and _is_ip(host):
            problem = self.address_problem(host)
        if problem is None and host.lower().rstrip(".") == "localhost":
            problem = self.address_problem("127.0.0.1")
        return problem


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_network(value: str) -> Network:
    """``10.0.0.0/8``, ``127.0.0.1`` (one address) or ``fd00::/8``; ValueError if not."""
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f'"{value}" is not a network; use an address or CIDR such as 10.0.0.0/8'
        ) from None
