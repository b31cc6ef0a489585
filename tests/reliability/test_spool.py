"""Spool space (issue 30, item 7), on a real uvicorn process: multipart uploads are parsed in memory, within
the upload limit, so a full TMPDIR cannot fail them (Starlette spooled parts over 1 MB to disk: 500 "No space
left on device" while the same image as a raw body got 200)."""

from __future__ import annotations

import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.errors import as_service_error
from tests.live_service import ServiceProcess, service_env
from tests.reliability.reliability_support import check_image, encode, noise, png_chunk

# The child may write no file larger than this: the server's own log fits, a spooled 3 MB part does not.
FILE_SIZE_LIMIT = 512 * 1024
IMAGE = encode(noise(12, 16, seed=5))  # 16x12
# The same image made 3 MB by an ancillary chunk that decoders skip (a photo's size, without its decode cost).
BIG_IMAGE = IMAGE[:33] + png_chunk(b"teSt", bytes(3 * 2**20)) + IMAGE[33:]


def no_room_for_files() -> None:
    """In the child: every write past FILE_SIZE_LIMIT fails (EFBIG) as on a full disk, instead of a signal."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.fixture(scope="module")
def cramped(weights_dir: Path, workdir: Path) -> Iterator[ServiceProcess]:
    env = service_env(weights_dir, IMDN_BACKEND="torch", OMP_NUM_THREADS="1", IMDN_MODELS="x2")
    with ServiceProcess(workdir, env, preexec_fn=no_room_for_files) as server:
        server.wait_ready(90)
        yield server


def test_a_multipart_upload_needs_no_disk(cramped: ServiceProcess) -> None:
    """The web page's multipart form with a 3 MB image is served with no room on disk, as a raw body is."""
    files = {"image": ("photo.png", BIG_IMAGE, "image/png")}
    response = httpx.post(f"{cramped.url}/v1/superresolve", files=files, data={"scale": "2"}, timeout=60)
    check_image(response, (32, 24))
    raw = httpx.post(f"{cramped.url}/v1/superresolve?scale=2", content=BIG_IMAGE,
                     headers={"content-type": "image/png"}, timeout=60)
    check_image(raw, (32, 24))
    assert "Traceback" not in cramped.output(), cramped.log_tail()


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EDQUOT", "EFBIG"])
def test_a_full_disk_is_507_with_retry_after(errno_name: str) -> None:
    """Whatever else writes to disk and finds it full answers 507 with Retry-After, never 500."""
    import errno

    error = as_service_error(OSError(getattr(errno, errno_name), "No space left on device"))
    assert error.status == 507 and error.headers.get("Retry-After"), (error.status, error.headers)
