"""Outbound HTTP to notification targets: only to allowed hosts, only to checked addresses.

A webhook URL is typed in by whoever may edit a channel, so the server posting to it must not
become a way to reach what only the server can reach (Redis on localhost, a cloud metadata
address, the private network): server-side request forgery. The rules, checked when a channel
is saved (:func:`url_refusal`, through the channel's validation) and again when it sends
(:func:`guarded_open`):

* the scheme is ``https``, and the host is listed in ``ORCHESTRATOR["WEBHOOK_ALLOWED_HOSTS"]``
  (entries ``host`` or ``host:port``; default ``["hooks.slack.com"]``);
* plain ``http`` only for a loopback host listed with its port (``127.0.0.1:8080``): a local
  Slack look-alike in tests and demos;
* the names are resolved at send time, every address is checked, and the connection goes to
  the checked address (so a DNS answer that changes in between cannot move it). Loopback,
  private, link-local, reserved and multicast addresses are refused unless the URL names that
  address itself (``127.0.0.1``, ``[::1]``) or ``localhost``, and that host is listed;
* redirects are never followed, user info in the URL is refused, and no proxy is used.

Refusal messages name the host and the rule, never the path (a webhook's path is its secret).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from orchestrator.conf import conf

SETTING = 'ORCHESTRATOR["WEBHOOK_ALLOWED_HOSTS"]'
LOCALHOST_NAMES = frozenset({"localhost", "localhost.localdomain"})
DEFAULT_PORTS = {"http": 80, "https": 443}


class OutboundRefused(Exception):
    """A request to a notification target was refused before anything was sent.

    The message names the host and the rule it breaks, never the URL's path or query.
    """


@dataclass(frozen=True)
class AllowedHost:
    """One entry of ``WEBHOOK_ALLOWED_HOSTS``: a host name or address, and maybe a port.

    An entry without a port allows the scheme's default port only (443 for https).
    """

    host: str
    port: int | None = None

    def matches(self, host: str, port: int, scheme: str = "https") -> bool:
        return self.host == host and (self.port or DEFAULT_PORTS[scheme]) == port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_allowed_host(entry: Any) -> AllowedHost:
    """``"host"`` or ``"host:port"`` (``"[::1]:8080"`` for IPv6) as an :class:`AllowedHost`.

    Raise ``ValueError`` saying what is wrong with an entry that is not one.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"{entry!r} is not a host name such as 'hooks.slack.com'")
    text = entry.strip().lower()
    if "://" in text or "/" in text or "@" in text or any(c.isspace() for c in text):
        raise ValueError(
            f"{entry!r} must be a bare host or host:port, such as 'hooks.slack.com' or "
            "'127.0.0.1:8080', without scheme or path"
        )
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        raise ValueError(f"{entry!r} has a port that is not a number from 1 to 65535") from None
    host = parts.hostname or ""
    if not host or (port is not None and not 0 < port < 65536):
        raise ValueError(f"{entry!r} has no host, or a port that is not from 1 to 65535")
    return AllowedHost(host, port)


def allowed_hosts() -> list[AllowedHost]:
    """The valid entries of ``WEBHOOK_ALLOWED_HOSTS`` (system check orchestrator.E011 reports
    the others, which allow nothing)."""
    entries = []
    for entry in conf.WEBHOOK_ALLOWED_HOSTS:
        try:
            entries.append(parse_allowed_host(entry))
        except ValueError:
            continue
    return entries


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (from a URL) is ``localhost`` or a loopback address."""
    address = _ip(host)
    return host in LOCALHOST_NAMES if address is None else address.is_loopback


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a global unicast address (not loopback, private, link-local,
    reserved, multicast or unspecified)."""
    ip = _ip(address)
    return ip is not None and ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Destination:
    """Where a checked URL goes: its scheme, host and port, and whether non-public addresses
    are allowed for it (the URL names a listed address or localhost)."""

    scheme: str
    host: str
    port: int
    private_allowed: bool


def check_url(
    url: str, *, what: str = "The webhook URL", from_settings: bool = False
) -> Destination:
    """The destination of ``url``; raise :class:`OutboundRefused` when the rules refuse it.

    ``what`` starts the messages ("The webhook URL", "SLACK_API_URL"). ``from_settings`` is for
    a URL from the project's settings (``SLACK_API_URL``), whose host need not be listed: the
    scheme and address rules still apply.
    """
    try:
        parts = urlsplit((url or "").strip())
        port = parts.port
    except ValueError:
        raise OutboundRefused(
            f"{what} cannot be parsed: its port must be a number from 1 to 65535."
        ) from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        raise OutboundRefused(f"{what} must start with https:// and name a host.")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused(f"{what} must not carry a user name or password before the host.")
    if any(c.isspace() or ord(c) < 32 for c in url.strip()):
        raise OutboundRefused(f"{what} must not contain spaces or control characters.")
    effective_port = port or DEFAULT_PORTS[scheme]
    listed = [e for e in allowed_hosts() if e.matches(host, effective_port, scheme)]
    shown = f"[{host}]" if ":" in host else host
    if not listed and not from_settings:
        allowed = ", ".join(str(e) for e in allowed_hosts()) or "nothing"
        raise OutboundRefused(
            f"{what} points at {shown}:{effective_port}, which is not in {SETTING} "
            f"(allowed now: {allowed}). Use the URL Slack gave you, or add the host to that "
            "setting."
        )
    loopback = is_loopback_host(host)
    # Plain http needs the explicit host:port entry even for a URL from the settings.
    if scheme == "http" and not (loopback and any(e.port is not None for e in listed)):
        raise OutboundRefused(
            f"{what} must use https://; plain http:// is allowed only for a loopback host "
            f"listed with its port in {SETTING}, such as 127.0.0.1:8080."
        )
    # A listed address (or localhost) is the operator's explicit choice of that address; a
    # listed name must resolve to public addresses (checked when sending).
    private_allowed = _ip(host) is not None or host in LOCALHOST_NAMES
    return Destination(scheme, host, effective_port, private_allowed)


def url_refusal(
    url: str, *, what: str = "The webhook URL", from_settings: bool = False
) -> str | None:
    """Why ``url`` may not be posted to under the current settings, or None."""
    try:
        check_url(url, what=what, from_settings=from_settings)
    except OutboundRefused as err:
        return str(err)
    return None


def resolve_checked(destination: Destination) -> list[tuple[Any, ...]]:
    """The socket addresses of ``destination``, every one checked; raise :class:`OutboundRefused`
    when any address is not allowed.

    A name that does not resolve raises ``OSError`` (``socket.gaierror``), as connecting would:
    a DNS outage is transient, and the delivery retries it.
    """
    try:
        infos = socket.getaddrinfo(
            destination.host, destination.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except UnicodeError:
        raise OutboundRefused(f"The host {destination.host} is not a valid name.") from None
    if not infos:
        raise OSError(f"The host {destination.host} resolves to no address.")
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if is_public_address(address):
            continue
        if not destination.private_allowed:
            raise OutboundRefused(
                f"The host {destination.host} resolves to a non-public address ({address}); "
                "only an address listed literally in "
                f"{SETTING} may be loopback, private, link-local or reserved."
            )
        if destination.host in LOCALHOST_NAMES and not is_loopback_host(address):
            raise OutboundRefused(
                f"The host {destination.host} resolves to {address}, which is not loopback."
            )
    if destination.scheme == "http" and not all(
        is_loopback_host(str(info[4][0])) for info in infos
    ):
        raise OutboundRefused(f"Plain http:// to {destination.host} leaves this machine.")
    return list(infos)


def _pinned_create_connection(
    infos: Iterable[tuple[Any, ...]],
) -> Any:
    """A stand-in for ``socket.create_connection`` that connects only to ``infos``."""

    def create_connection(
        address: tuple[str, int], timeout: Any = None, source_address: Any = None
    ) -> socket.socket:
        last: OSError | None = None
        for family, kind, proto, _name, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
            except OSError as err:
                sock.close()
                last = err
                continue
            return sock
        raise last or OSError("no address to connect to")

    return create_connection


def _connection_factory(base: type[http.client.HTTPConnection], from_settings: bool) -> Any:
    """A connection class for ``AbstractHTTPHandler.do_open`` that checks its destination and
    connects to the checked addresses only."""

    def connect(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        kwargs.pop("check_hostname", None)  # Python 3.11 passes it; HTTPSConnection ignores None
        conn = base(host, **kwargs)
        scheme = "https" if isinstance(conn, http.client.HTTPSConnection) else "http"
        destination = check_url(
            f"{scheme}://{host}/", what="The request", from_settings=from_settings
        )
        conn._create_connection = _pinned_create_connection(  # type: ignore[attr-defined]
            resolve_checked(destination)
        )
        return conn

    return connect


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, from_settings: bool) -> None:
        super().__init__()
        self._from_settings = from_settings

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = _connection_factory(http.client.HTTPConnection, self._from_settings)
        return self.do_open(factory, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, from_settings: bool, context: ssl.SSLContext | None = None) -> None:
        super().__init__(context=context or ssl.create_default_context())
        self._from_settings = from_settings

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = _connection_factory(http.client.HTTPSConnection, self._from_settings)
        return self.do_open(factory, req, context=self._context)  # type: ignore[attr-defined]


def guarded_opener(
    *, from_settings: bool = False, context: ssl.SSLContext | None = None
) -> urllib.request.OpenerDirector:
    """A urllib opener that applies the rules above to every request it opens.

    It has no redirect handler (a 3xx answer is returned as it is), no error processor (a 4xx or
    5xx answer is returned, not raised) and no proxy handler.
    """
    opener = urllib.request.OpenerDirector()
    opener.add_handler(_GuardedHTTPHandler(from_settings))
    opener.add_handler(_GuardedHTTPSHandler(from_settings, context))
    return opener


def guarded_open(
    request: urllib.request.Request,
    timeout: float,
    *,
    what: str = "The webhook URL",
    from_settings: bool = False,
    context: ssl.SSLContext | None = None,
) -> http.client.HTTPResponse:
    """Open ``request`` (its whole URL checked with :func:`check_url` first) through
    :func:`guarded_opener`; raise :class:`OutboundRefused` when the rules refuse it."""
    check_url(request.full_url, what=what, from_settings=from_settings)
    opener = guarded_opener(from_settings=from_settings, context=context)
    response: http.client.HTTPResponse = opener.open(request, timeout=timeout)
    return response
