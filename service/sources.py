"""Source images by URL: an allowlist of hosts, public addresses only (SSRF), bounded in bytes, time and redirects.

The name is resolved once; every address must pass, and the connection goes to one of exactly those
addresses (the URL is rewritten to the IP, the Host header and TLS SNI keep the name), so a DNS answer that
changes between the check and the connection (rebinding) cannot reach anything the check refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from fastapi import Request
from PIL import Image

from service.config import Settings
from service.errors import BadRequestError, PayloadTooLargeError, ServiceError, UnsupportedMediaError
from service.processing import watched
from service.state import ServiceState
from service.upload import upload_place

log = logging.getLogger("service")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
MAX_URL_CHARS = 2048
# NAT64 (RFC 6052): an IPv6 address that carries an IPv4 one in its last 32 bits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class SourceForbiddenError(ServiceError):
    status, kind, title = 403, "source-forbidden", "Source not allowed"


class SourceFailedError(ServiceError):
    status, kind, title = 502, "source-failed", "The source's server failed"


class SourceTimeoutError(ServiceError):
    status, kind, title = 504, "source-timeout", "The source's server was too slow"


def shown(url: httpx.URL) -> str:
    """A URL for logs and messages: scheme, host, port and path; never the query (it may hold a token)."""
    return str(url.copy_with(query=None, fragment=None))


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, NAT64, 6to4, Teredo's client), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return ip.teredo[1] if ip.teredo is not None else None


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local (the 169.254.169.254 metadata service),
    shared (100.64/10), multicast, reserved or unspecified, in IPv4 or IPv6, nor an IPv6 form of one."""
    inner = embedded_ipv4(ip)
    if inner is not None and not is_public(inner):
        return False
    return ip.is_global and not ip.is_multicast


def parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class SourcePolicy:
    """IMDN_SOURCE_ALLOW: host names (`images.example.com`), subdomains (`*.example.com`), any public host (`*`),
    and addresses or networks (`127.0.0.1`, `10.0.0.0/8`) that may be fetched although they are not public."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    any_host: bool
    networks: tuple[IPNetwork, ...]

    @classmethod
    def from_entries(cls, entries: list[str]) -> SourcePolicy:
        names, suffixes, networks, any_host = set(), [], [], False
        for entry in (e.strip().lower().rstrip(".") for e in entries):
            if entry == "*":
                any_host = True
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            elif (ip := parse_ip(entry)) is not None:
                networks.append(ipaddress.ip_network(ip))
            elif "/" in entry:
                networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), any_host, tuple(networks))

    @property
    def enabled(self) -> bool:
        return bool(self.names or self.suffixes or self.any_host or self.networks)

    def named(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)

    def host_allowed(self, host: str) -> bool:
        ip = parse_ip(host)
        if ip is not None:
            return self.named(ip) or self.any_host
        return self.any_host or host in self.names or host.endswith(self.suffixes)

    def address_allowed(self, ip: IPAddress) -> bool:
        return self.named(ip) or is_public(ip)


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_url(text: str) -> httpx.URL:
    """A URL the fetcher may try: http(s), a host, no credentials; else 400."""
    if len(text) > MAX_URL_CHARS:
        raise BadRequestError(f"the source URL is {len(text):,} characters long; the limit is {MAX_URL_CHARS:,}")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise BadRequestError(f"the source URL is malformed: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise BadRequestError("the source URL must be an absolute http:// or https:// URL")
    if url.userinfo:
        raise BadRequestError("the source URL must not carry a user name or password")
    return url


def looks_like_image(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - whatever Pillow cannot identify is not an image to us
        return False
    return True


class SourceFetcher:
    """Fetches one source image per call, within the settings' limits; one HTTP client, closed with the app."""

    def __init__(self, settings: Settings, resolve: Resolver = system_resolve) -> None:
        self.policy = SourcePolicy.from_entries(settings.source_allow)
        self.limit = settings.max_upload_bytes
        self.total_s = settings.source_timeout_s
        self.max_redirects = settings.source_max_redirects
        self.resolve = resolve
        # No proxies from the environment (they would connect by name), no automatic redirects (each is checked),
        # no compression (a small gzip body could inflate past the limit before it is counted), and no pooled
        # connections: the pool is keyed by address, and a TLS connection verified for one name must not carry
        # a request for another name on the same address.
        timeout = httpx.Timeout(self.total_s, connect=settings.source_connect_timeout_s)
        self.client = httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout,
                                        limits=httpx.Limits(max_keepalive_connections=0),
                                        headers={"Accept-Encoding": "identity", "Accept": "image/*"})

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(self, text: str) -> bytes:
        """The image at URL `text`: 400 bad URL, 403 not allowed, 413 too large, 415 not an image, 502 the origin
        failed, 504 it was too slow. Refusals are logged without the query string."""
        url = checked_url(text)
        try:
            return await asyncio.wait_for(self._follow(url), self.total_s)
        except TimeoutError as exc:
            error = SourceTimeoutError(f"the source {shown(url)} did not arrive within {self.total_s:g} s")
            log.warning("source refused: %s", error.detail)
            raise error from exc
        except ServiceError as error:
            log.warning("source refused: %s", error.detail)
            raise

    async def _follow(self, url: httpx.URL) -> bytes:
        for _ in range(self.max_redirects + 1):
            answer = await self._get(url)
            if isinstance(answer, bytes):
                return answer
            url = answer  # a redirect: checked from the start, like the first URL
        raise SourceFailedError(f"the source redirected more than {self.max_redirects} times")

    async def _addresses(self, url: httpx.URL) -> list[str]:
        """Every address the URL's host resolves to, each allowed; else 403 naming the first refused."""
        host = url.raw_host.decode("ascii").lower().rstrip(".")  # IDNA (xn--) form: matched as it is resolved
        if not self.policy.enabled:
            raise SourceForbiddenError("fetching sources by URL is off on this service (IMDN_SOURCE_ALLOW is empty)")
        if not self.policy.host_allowed(host):
            raise SourceForbiddenError(f"the host {host!r} is not in this service's IMDN_SOURCE_ALLOW")
        try:
            addresses = await self.resolve(host, url.port or (443 if url.scheme == "https" else 80))
        except OSError as exc:
            raise SourceFailedError(f"the source's host {host!r} could not be resolved: {exc}") from exc
        for address in addresses:
            ip = parse_ip(address)
            if ip is None or not self.policy.address_allowed(ip):
                raise SourceForbiddenError(f"the host {host!r} resolves to {address}, which is not a public address "
                                           "(loopback, private, link-local and metadata addresses are refused unless "
                                           "IMDN_SOURCE_ALLOW names them)")
        if not addresses:
            raise SourceFailedError(f"the source's host {host!r} has no address")
        return addresses

    async def _get(self, url: httpx.URL) -> bytes | httpx.URL:
        """One request: the body, or where a redirect points."""
        addresses = await self._addresses(url)
        port = f":{url.port}" if url.port else ""
        headers = {"Host": f"{url.raw_host.decode('ascii')}{port}"}
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
        for i, address in enumerate(addresses):
            pinned = url.copy_with(host=address)  # connect to the address just checked, never to a fresh lookup
            request = self.client.build_request("GET", pinned, headers=headers, extensions=extensions)
            try:
                response = await self.client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if i + 1 < len(addresses):
                    continue  # another address of the same name (an IPv6 one unreachable from here, say)
                if isinstance(exc, httpx.ConnectTimeout):
                    raise SourceTimeoutError(f"the source {shown(url)} did not accept a connection in time") from exc
                raise SourceFailedError(f"cannot connect to the source {shown(url)}: {exc or type(exc).__name__}") \
                    from exc
            except httpx.TimeoutException as exc:
                raise TimeoutError from exc
            except httpx.HTTPError as exc:
                raise SourceFailedError(f"the source {shown(url)} failed: {exc or type(exc).__name__}") from exc
            try:
                return await self._read(url, response)
            finally:
                await response.aclose()
        raise AssertionError("unreachable: _addresses returns at least one address")

    async def _read(self, url: httpx.URL, response: httpx.Response) -> bytes | httpx.URL:
        if response.is_redirect and "location" in response.headers:
            try:
                target = url.join(response.headers["location"])
            except httpx.InvalidURL as exc:
                raise SourceFailedError(f"the source {shown(url)} redirected to a malformed URL") from exc
            if target.scheme not in ("http", "https") or target.userinfo:
                raise SourceForbiddenError(f"the source {shown(url)} redirected to a URL that is not plain http(s)")
            return target
        if response.status_code != 200:
            raise SourceFailedError(f"the source {shown(url)} answered {response.status_code} "
                                    f"{response.reason_phrase}".rstrip())
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise PayloadTooLargeError(f"the source is {int(declared):,} bytes; the limit is {self.limit:,}")
        data = bytearray()
        try:
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) > self.limit:
                    raise PayloadTooLargeError(f"the source is over the limit of {self.limit:,} bytes")
        except httpx.TimeoutException as exc:
            raise TimeoutError from exc
        except httpx.HTTPError as exc:  # a body shorter than its Content-Length, a connection reset, ...
            raise SourceFailedError(f"the source {shown(url)} broke off after {len(data):,} bytes: "
                                    f"{exc or type(exc).__name__}") from exc
        content_type = response.headers.get("content-type", "").lower()
        if not content_type.startswith("image/") and not looks_like_image(bytes(data)):
            raise UnsupportedMediaError(f"the source {shown(url)} is {content_type or 'untyped'}, not an image")
        return bytes(data)


async def fetch_source(request: Request, state: ServiceState, url: str) -> bytes:
    """The source at `url` for this request, fetched in an upload place (IMDN_MAX_UPLOADS) before admission, so a
    slow origin holds no processing slot; a client that leaves meanwhile cancels the fetch (499)."""
    if state.sources is None:
        raise SourceForbiddenError("fetching sources by URL is off on this service (IMDN_SOURCE_ALLOW is empty)")
    with contextlib.suppress(httpx.InvalidURL):
        request.state.log_extra = {"source": shown(httpx.URL(url))}
    with upload_place(request, state):
        return await watched(request, state.sources.fetch(url), threading.Event(), "while its source was fetched")
