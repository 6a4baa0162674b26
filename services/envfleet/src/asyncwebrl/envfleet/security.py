"""The host policy: an agent's browser reaches its task's own origins and nothing else.

Enforced inside the browser by request interception on every context (pages,
subresources, fetch/XHR, WebSockets), by refusing agent navigations to other
schemes, and by closing new windows and cancelling downloads. The Kubernetes
NetworkPolicy is the second wall, not the only one.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WEB_SCHEMES = frozenset(_DEFAULT_PORTS)
# Never fetched from the network, so nothing to leak; pages build these themselves.
_INERT_SCHEMES = frozenset({"data", "blob", "about"})


def origin_of(url: str) -> str | None:
    """``scheme://host:port`` with the default port filled in and ws folded into http."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _WEB_SCHEMES or not parts.hostname:
        return None
    port = port or _DEFAULT_PORTS[scheme]
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return f"{scheme}://{parts.hostname.lower()}:{port}"


def _is_internal(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host in ("localhost", "metadata.google.internal") or host.endswith(".internal")
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified


class HostPolicy:
    """Decides whether a URL may be requested in one session's browser context."""

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        origins = set()
        for url in allowed_origins:
            origin = origin_of(url)
            if origin is None:
                raise ValueError(f"allowed_origins: not an http(s) origin: {url!r}")
            origins.add(origin)
        self.allowed = frozenset(origins)

    def suspicious_pattern(self) -> re.Pattern[str]:
        """URLs that may violate the policy: all but ``<origin>`` followed by / ? # or the end.

        Written in the common subset of Python and JavaScript regex syntax.
        """
        alternatives = []
        for origin in sorted(self.allowed):
            scheme, rest = origin.split("://", 1)
            host, port = rest.rsplit(":", 1)
            schemes = "http|ws" if scheme == "http" else "https|wss"
            default = _DEFAULT_PORTS[scheme]
            port_part = f"(?::{port})?" if int(port) == default else f":{port}"
            alternatives.append(f"(?:{schemes})://{re.escape(host)}{port_part}(?:[/?#]|$)")
        if not alternatives:
            return re.compile(r"^")
        return re.compile(r"^(?!" + "|".join(alternatives) + ")")

    def violation(self, url: str, *, navigation: bool = False) -> str | None:
        """None when allowed, else the reason (a bounded label value)."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme in _INERT_SCHEMES and not navigation:
            return None
        if scheme not in _WEB_SCHEMES:
            return "scheme"
        origin = origin_of(url)
        if origin is None:
            return "malformed"
        if origin in self.allowed:
            return None
        host = urlsplit(url).hostname or ""
        return "internal_address" if _is_internal(host) else "host_not_allowed"


async def install(context, policy: HostPolicy, on_block: Callable[[str, str], None]) -> None:
    """Route every request and WebSocket of ``context`` through ``policy``."""

    async def route(route) -> None:
        url = route.request.url
        reason = policy.violation(url)
        if reason is None:
            await route.continue_()
        else:
            on_block(reason, url)
            await route.abort("blockedbyclient")

    async def route_ws(ws) -> None:
        reason = policy.violation(ws.url)
        if reason is None:
            ws.connect_to_server()
        else:
            on_block(reason, ws.url)
            await ws.close(code=1008, reason="blocked by asyncwebrl host policy")

    # Only what is *not* plainly one of the allowed origins is sent to Python; the
    # regex runs inside Playwright's driver, so the task's own traffic pays nothing.
    suspicious = policy.suspicious_pattern()
    await context.route(suspicious, route)
    await context.route_web_socket(suspicious, route_ws)
