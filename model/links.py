"""Signed GET links and result ETags: pure functions (standard library only) that the service, `imdn-sr sign`
and sr_client share, so a link made by one is checked by the same code in the other.

A link is `/v1/superresolve?url=...&scale=...&expires=...&sig=...`. `sig` is an HMAC-SHA256, base64url
without padding, over the canonical form of every other query parameter: names sorted, names and values
percent-encoded the same way on both sides. Any parameter added, removed or changed after signing changes
the canonical form, so the signature no longer matches.

    imdn-sr sign https://images.example.com/cat.jpg --scale 2 --base https://sr.example.com
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from urllib.parse import quote

ENDPOINT = "/v1/superresolve"
# A version tag in the signed message: a future link format can never be mistaken for this one.
SIGNED_PREFIX = b"imdn-sr link v1\n"
MIN_KEY_CHARS = 16  # a shorter secret is guessable offline from one signed link
LinkValue = str | int | float | None


def query_value(value: str | int | float) -> str:
    """A parameter as it is written in a link: 2 not 2.0, 2.5 as 2.5."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """The parameters other than `sig`, sorted by name, each percent-encoded (nothing left unescaped but
    A-Z a-z 0-9 - . _ ~), joined as a query string."""
    pairs = sorted((name, value) for name, value in params if name != "sig")
    return "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in pairs)


def signature(key: str, params: Iterable[tuple[str, str]]) -> str:
    digest = hmac.new(key.encode(), SIGNED_PREFIX + canonical_query(params).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signature_matches(keys: Iterable[str], params: Iterable[tuple[str, str]], offered: str) -> bool:
    """Does `offered` sign `params` under any of `keys`? Each key is compared in constant time, and every key
    is tried, so the time taken says nothing about which key (or how much of a signature) matched."""
    pairs = list(params)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(signature(key, pairs).encode(), offered.encode())
    return matched


def link_params(url: str, options: Mapping[str, LinkValue], expires: int | None = None) -> list[tuple[str, str]]:
    """The query parameters of a link to `url` with these options (None values left out)."""
    params = [("url", url)] + [(name, query_value(value)) for name, value in options.items() if value is not None]
    if expires is not None:
        params.append(("expires", str(int(expires))))
    return params


def signed_link(base: str, url: str, key: str, expires: int | None = None, **options: LinkValue) -> str:
    """The full link `base`/v1/superresolve?... for `url` with `options` (scale, width, height, model, content,
    format, quality), signed with `key`; `expires` is a Unix time after which the service refuses it."""
    params = link_params(url, options, expires)
    params.append(("sig", signature(key, params)))
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params)
    return f"{base.rstrip('/')}{ENDPOINT}?{query}"


def result_etag(source_sha256: str, options: Mapping[str, object], weights: Mapping[str, str]) -> str:
    """A strong ETag for a result: the source's SHA-256, the resolved options and every served model's weights
    SHA-256. The same three give the same image; a change in any of them gives a new tag."""
    identity = json.dumps({"source": source_sha256, "options": dict(options), "weights": dict(weights)},
                          sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(identity.encode()).hexdigest()[:40] + '"'


def sign_main(argv: list[str] | None = None) -> int:
    """`imdn-sr sign URL --scale 2`: print a signed link (the key from --key or the first of $IMDN_URL_KEYS)."""
    parser = argparse.ArgumentParser(prog="imdn-sr sign", description="Print a signed GET link to the upscaled "
                                     "image at URL, for an <img src> or a CDN.")
    parser.add_argument("url", help="the source image's URL (its host must be in the service's IMDN_SOURCE_ALLOW)")
    parser.add_argument("--base", default=os.environ.get("IMDN_SR_URL", "http://127.0.0.1:8000"),
                        help="the service's public base URL (default: $IMDN_SR_URL or %(default)s)")
    parser.add_argument("--key", help="the signing key (default: the first of $IMDN_URL_KEYS)")
    parser.add_argument("--expires-in", type=int, metavar="SECONDS", help="the link stops working after this long")
    for name, kind in (("scale", float), ("width", int), ("height", int), ("model", str), ("content", str),
                       ("format", str), ("quality", int)):
        parser.add_argument(f"--{name}", type=kind)
    args = parser.parse_args(argv)
    key = args.key or next((k.strip() for k in os.environ.get("IMDN_URL_KEYS", "").split(",") if k.strip()), "")
    if len(key) < MIN_KEY_CHARS:
        parser.error(f"give a signing key of at least {MIN_KEY_CHARS} characters (--key or $IMDN_URL_KEYS)")
    expires = int(time.time()) + args.expires_in if args.expires_in is not None else None
    options = {name: getattr(args, name) for name in ("scale", "width", "height", "model", "content", "format",
                                                      "quality")}
    print(signed_link(args.base, args.url, key, expires, **options))
    return 0


if __name__ == "__main__":
    sys.exit(sign_main())
