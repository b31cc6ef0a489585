"""Signed GET links (`GET /v1/superresolve?url=...&sig=...`): their parameters and the check before any work.

The signature (model/links.py) is the link's authorization, so a page can put it in an <img src>, which
sends no API key. Without IMDN_URL_KEYS, unsigned links are refused unless IMDN_URL_UNSIGNED=allow (a
private network), and then the API key, when one is set, is required as for POST.
"""

from __future__ import annotations

import time

from fastapi import Request
from pydantic import Field

from model.links import signature_matches
from service.errors import ServiceError
from service.params import UpscaleParams
from service.security import require_api_key
from service.state import ServiceState


class LinkSignatureError(ServiceError):
    status, kind, title = 403, "bad-signature", "Link not signed, wrongly signed or expired"


class LinkParams(UpscaleParams):
    """A link's query: the source URL (required), the options, and its signature."""

    url: str = Field(..., max_length=2048, description="the source image's http(s) URL; its host must be in the "
                     "service's IMDN_SOURCE_ALLOW")
    expires: int | None = Field(None, ge=0, description="Unix time after which the link is refused (signed with it)")
    sig: str | None = Field(None, max_length=128, description="HMAC-SHA256 of the other parameters "
                            "(imdn-sr sign, sr_client.signed_link; docs/urls.md)")


def check_link(request: Request, state: ServiceState, params: dict[str, str], expires: int | None) -> None:
    """403 unless the link is signed with one of IMDN_URL_KEYS and not expired (or unsigned links are allowed)."""
    settings = state.settings
    offered = params.get("sig")
    if not settings.url_keys:
        if settings.url_unsigned != "allow":
            raise LinkSignatureError("GET links are off on this service: the operator sets IMDN_URL_KEYS to sign "
                                     "them (or IMDN_URL_UNSIGNED=allow on a private network)")
        if offered is not None:
            raise LinkSignatureError("this link is signed, but the service has no IMDN_URL_KEYS to check it with")
        require_api_key(request, state)
        return
    if not offered:
        raise LinkSignatureError("this link has no sig parameter: links must be signed (imdn-sr sign)")
    if not signature_matches(settings.url_keys, params.items(), offered):
        raise LinkSignatureError("the link's signature does not match its parameters (changed after signing, or "
                                 "signed with a key this service does not hold)")
    if expires is not None and expires < time.time():
        raise LinkSignatureError("the link has expired")
