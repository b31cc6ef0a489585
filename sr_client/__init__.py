"""Client for the IMDN super-resolution service: sync, async, whole folders, signed GET links (signed_link), and a
CLI (python -m sr_client)."""

from model.links import signed_link
from sr_client.client import (
    DEFAULT_URL,
    AsyncSRClient,
    FolderSummary,
    Result,
    RetryEvent,
    RetryPolicy,
    SRClient,
    SRError,
    aupscale_folder,
    upscale_folder,
)

__all__ = [
    "DEFAULT_URL",
    "AsyncSRClient",
    "FolderSummary",
    "Result",
    "RetryEvent",
    "RetryPolicy",
    "SRClient",
    "SRError",
    "aupscale_folder",
    "signed_link",
    "upscale_folder",
]
