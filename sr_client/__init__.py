"""Client for the IMDN super-resolution service: sync, async, whole folders, and a CLI (python -m sr_client)."""

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
    "upscale_folder",
]
