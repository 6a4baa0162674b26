"""The host policy: an agent's browser reaches its task's own origins and nothing else.

Enforced inside the browser by request interception on every context (pages,
subresources, fetch/XHR, WebSockets), by refusing agent navigations to other
schemes, and by closing new windows and cancelling downloads. The Kubernetes
NetworkPolicy is the second wall, not the only one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
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
        host = host.lower().rstrip(".")
        return host in ("localhost", "metadata.google.internal") or host.endswith((".internal", ".localhost"))
    return internal_ip(ip)


def internal_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Private, loopback, link-local (169.254.169.254), reserved, multicast or unspecified; an IPv4-mapped
    IPv6 address is judged by its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified


# ---------------------------------------------------------------------------------------------------------
# Live-website (WebGym) tasks: URLs come from outside (AllocateRequest.web_task), so every one is checked.

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def parse_host_map(entries: Iterable[str]) -> dict[str, str]:
    """``NAME=IP`` entries (--resolve-host-map) as {name: ip}; ValueError naming the bad entry.

    A name is a DNS name (never an IP literal); the IP may be anything, loopback included: that is the point
    of the map (test sites and offline mirrors on loopback or a private address)."""
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, ip = entry.partition("=")
        name, ip = name.strip().lower(), ip.strip()
        if not sep or not name or not ip:
            raise ValueError(f"{entry!r} is not NAME=IP")
        if not _HOSTNAME.match(name) or _is_ip(name):
            raise ValueError(f"{name!r} is not a host name")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"{ip!r} (for {name}) is not an IP address") from None
        if name in out:
            raise ValueError(f"{name!r} is mapped twice")
        out[name] = ip
    return out


def host_resolver_rules(host_map: dict[str, str]) -> str:
    """Chromium's --host-resolver-rules value for ``host_map``."""
    return ",".join(f"MAP {name} {ip if ':' not in ip else '[' + ip + ']'}" for name, ip in sorted(host_map.items()))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def check_web_url(url: str, *, origin_only: bool, max_chars: int, host_map: dict[str, str]) -> str | None:
    """None when ``url`` may be a live task's start URL (or, ``origin_only``, one of its allowed origins),
    else what is wrong with it. Internal addresses given literally are refused; a name is refused when it is
    one of the internal names (localhost, *.internal) unless --resolve-host-map maps it. What a name
    resolves to is checked by ``resolve_public`` at Allocate."""
    if not url:
        return "must not be empty"
    if len(url) > max_chars:
        return f"longer than {max_chars} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http or https URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not contain credentials"
    host = (parts.hostname or "").lower()
    if not host:
        return "must have a host"
    if port == 0:
        return "port 0 is not a port"
    if origin_only and (parts.path not in ("", "/") or parts.query or parts.fragment):
        return "must be an origin (scheme://host[:port]), without a path, query or fragment"
    if host in host_map:
        return None
    if not _is_ip(host) and not _HOSTNAME.match(host.rstrip(".")):
        return "host is not a valid DNS name (IDN hosts must be given in punycode)"
    if _is_internal(host):
        return "host is an internal address (private, loopback, link-local or metadata)"
    return None


class SiteUnresolved(Exception):
    """A live task's host has no address (DNS failure, timeout)."""


async def resolve_public(host: str, port: int, timeout_s: float, host_map: dict[str, str]) -> list[str]:
    """The addresses ``host`` resolves to; ValueError when any is internal (a public name pointing at
    loopback, a private range or the metadata address, or a numeric form such as 2130706433), SiteUnresolved
    when it has none. Names in ``host_map`` are what the map says and are not looked up.

    This is checked when a task is allocated; a name that changes its answer afterwards (DNS rebinding) is
    the NetworkPolicy's to stop, as before."""
    if host in host_map:
        return [host_map[host]]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    except (socket.gaierror, UnicodeError) as exc:
        raise SiteUnresolved(f"cannot resolve {host}: {exc}") from None
    except (asyncio.TimeoutError, TimeoutError):
        raise SiteUnresolved(f"cannot resolve {host}: no answer within {timeout_s:g} s") from None
    addresses = sorted({info[4][0] for info in infos})
    if not addresses:
        raise SiteUnresolved(f"cannot resolve {host}: no address")
    for address in addresses:
        if internal_ip(ipaddress.ip_address(address.split("%", 1)[0])):
            raise ValueError(f"host {host} resolves to an internal address ({address})")
    return addresses


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
    """Route every request and WebSocket of ``context`` through ``policy``.

    Not the hops of a server redirect: Playwright calls a route handler for the first URL only and continues
    every redirect itself (its docs' note on ``route``; in its Chromium network manager a request with
    ``redirectedFrom`` is sent straight to ``Fetch.continueRequest``). ``guard_redirects`` covers those."""

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


async def guard_redirects(context, page, policy: HostPolicy, on_block: Callable[[str, str], None],
                          spawn: Callable[[object], None]) -> None:
    """Check every redirect hop of ``page``'s requests against ``policy`` before Chromium sends it.

    A CDP session of our own on the page's target with ``Fetch.enable``: Chromium chains its interception
    after Playwright's, so each hop (a paused request carrying ``redirectedRequestId``) is ours to continue or
    fail (ERR_BLOCKED_BY_CLIENT, as the route handler does); a disallowed hop is never fetched. First requests
    are Playwright's route's (``install``) and are continued here at once, so nothing is counted twice.
    Popups are closed and service workers blocked; an out-of-process iframe or a worker is a target of its
    own that this session does not see (the NetworkPolicy is the wall there)."""
    cdp = await context.new_cdp_session(page)

    async def answer(method: str, params: dict) -> None:
        try:
            await cdp.send(method, params)
        except Exception:  # the page or context closed meanwhile: nothing is waiting on the request
            pass

    def on_paused(event: dict) -> None:
        request_id = event["requestId"]
        url = event.get("request", {}).get("url", "")
        reason = policy.violation(url) if event.get("redirectedRequestId") else None
        if reason is None:
            spawn(answer("Fetch.continueRequest", {"requestId": request_id}))
        else:
            on_block(reason, url)
            spawn(answer("Fetch.failRequest", {"requestId": request_id, "errorReason": "BlockedByClient"}))

    cdp.on("Fetch.requestPaused", on_paused)
    await cdp.send("Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]})
