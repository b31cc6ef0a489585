"""sr_client against a real service process on loopback (random weights), plus its retry arithmetic."""

from __future__ import annotations

import asyncio
import io
import socket
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from PIL import Image

from sr_client import AsyncSRClient, RetryEvent, RetryPolicy, SRClient, SRError, upscale_folder
from sr_client.cli import main as cli_main
from sr_client.client import parse_retry_after, parse_server_timing
from tests.client.live_server import live_server, png_bytes
from tests.live_service import ServiceProcess
from tests.samples import heic, photo_exif, smooth_image


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# --- single images --------------------------------------------------------------------


def test_upscale_sync_bytes(server: ServiceProcess):
    with SRClient(server.url) as client:
        result = client.upscale(png_bytes(20, 14), scale=2)
    assert image_size(result.content) == (40, 28)
    assert (result.media_type, result.model, result.scale) == ("image/png", "as", "2x2")  # a photo by default: IMDN_AS
    assert (result.input_size, result.output_size) == ((20, 14), (40, 28))
    assert result.request_id and result.attempts == 1
    assert {"decode", "queue", "inference", "encode"} <= result.timings_ms.keys()


def test_result_repr_is_short_and_says_what_came_back(server: ServiceProcess):
    with SRClient(server.url) as client:
        result = client.upscale(png_bytes(64, 48), scale=2)
    text = repr(result)
    assert len(text) < 300 and str(result) == text
    assert "png 64x48 -> 128x96" in text and "model as" in text and "inference" in text
    assert f"{len(result.content):,} bytes" in text and "\\x" not in text  # sizes, not bytes


def test_upscale_sync_path_to_width_as_webp(server: ServiceProcess, tmp_path: Path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(16, 12))
    with SRClient(server.url) as client:
        result = client.upscale(source, width=24, format="webp", quality=80)
    assert result.media_type == "image/webp" and result.format == "webp"
    assert image_size(result.content) == (24, 18)  # one side given: the aspect ratio is kept
    assert result.model == "as"  # 1.5x of a photo (the default content): IMDN_AS


@pytest.mark.parametrize("request_", [{"scale": 2}, {"scale": 2.5}, {"scale": 3}, {"scale": 4}, {"scale": 6},
                                      {"scale": 8}, {"width": 30}, {"width": 60, "height": 20}])
def test_library_client_and_service_share_their_defaults(server: ServiceProcess, request_: dict):
    """Upscaler(runner) with nothing else plans the network that the service, with its default settings, runs
    for the client's default request: one set of defaults (model/plan.py) behind all three."""
    from model.backends import TorchRunner
    from model.engine import Upscaler

    library = Upscaler(TorchRunner({}))  # planning needs no networks
    with SRClient(server.url) as client:
        result = client.upscale(png_bytes(12, 10), **request_)
    assert result.model == library.plan((10, 12), **request_).label


def test_content_clean_picks_the_integer_network(server: ServiceProcess):
    """content=clean reaches the service: an exact x2 of a clean image runs IMDN x2, sync and async alike."""
    with SRClient(server.url) as client:
        assert client.upscale(png_bytes(20, 14), scale=2, content="clean").model == "x2"

    async def run() -> str:
        async with AsyncSRClient(server.url) as client:
            return (await client.upscale(png_bytes(20, 14), scale=3, content="clean")).model

    assert asyncio.run(run()) == "x3"


def test_content_is_checked_before_sending():
    with SRClient("http://sr.test", transport=httpx.MockTransport(lambda r: httpx.Response(500))) as client, \
            pytest.raises(ValueError, match="content must be one of photo, clean"):
        client.upscale(png_bytes(4, 4), content="drawing")


def test_restore_only_fit_and_frames_reach_the_service(server: ServiceProcess, tmp_path: Path):
    """scale 1, fit and frames go through the sync client, the async client and the command line."""
    with SRClient(server.url) as client:
        restored = client.upscale(png_bytes(20, 14), scale=1)
        assert (restored.output_size, restored.model, image_size(restored.content)) == ((20, 14), "as", (20, 14))
        assert client.upscale(png_bytes(20, 10), width=60, height=60, fit="contain").output_size == (60, 30)
        assert client.upscale(png_bytes(20, 10), width=60, height=60, fit="cover").output_size == (60, 60)
    frames = [Image.new("RGB", (8, 6), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=[50, 100, 150], loop=0)

    async def run(mode: str) -> int:
        async with AsyncSRClient(server.url) as client:
            result = await client.upscale(buffer.getvalue(), scale=2, frames=mode, format="webp")
            with Image.open(io.BytesIO(result.content)) as img:
                return int(getattr(img, "n_frames", 1))

    assert asyncio.run(run("all")) == 3 and asyncio.run(run("first")) == 1
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(20, 10))
    code = cli_main([str(source), "--url", server.url, "--width", "40", "--height", "40", "--fit", "contain", "-o",
                     str(tmp_path / "out"), "-q"])
    assert code == 0 and image_size((tmp_path / "out" / "in_40x40.png").read_bytes()) == (40, 20)
    with pytest.raises(ValueError, match="fit must be one of fill, contain, cover"):
        SRClient(server.url).upscale(png_bytes(4, 4), width=8, height=8, fit="stretch")


def x2_output_pixels(server: ServiceProcess) -> float:
    """Pixels the service has produced with IMDN x2 alone (its Prometheus counter)."""
    with urllib.request.urlopen(f"{server.url}/metrics") as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith('imdn_output_pixels_total{model="x2"}'))


def test_cli_sends_content(server: ServiceProcess, tmp_path: Path):
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(12, 10))
    before = x2_output_pixels(server)
    code = cli_main([str(source), "--url", server.url, "--scale", "2", "--content", "clean", "-o",
                     str(tmp_path / "out"), "-q"])
    assert code == 0
    assert x2_output_pixels(server) - before == 24 * 20  # clean content at x2: IMDN x2 made it


def test_metadata_and_avif_reach_the_service(server: ServiceProcess, tmp_path: Path):
    """A phone's HEIC with EXIF (GPS included) in, AVIF out: sync, async and the CLI each pass `metadata`."""
    source = tmp_path / "phone.heic"
    source.write_bytes(heic(smooth_image(10, 12), exif=photo_exif(1, 12, 10)))

    def exif_of(data: bytes) -> Image.Exif:
        with Image.open(io.BytesIO(data)) as img:
            return img.getexif()

    with SRClient(server.url) as client:
        kept = client.upscale(source, scale=2, format="avif", metadata="keep")
        stripped = client.upscale(source, scale=2, format="avif", metadata="strip")
    assert kept.media_type == "image/avif" and image_size(kept.content) == (24, 20)
    assert exif_of(kept.content).get_ifd(0x8825)  # GPS kept when asked
    assert not exif_of(stripped.content)

    async def nogps() -> bytes:
        async with AsyncSRClient(server.url) as client:
            return (await client.upscale(source, scale=2, format="avif", metadata="nogps")).content

    exif = exif_of(asyncio.run(nogps()))
    assert exif[0x010F] == "TestCam" and not exif.get_ifd(0x8825)
    code = cli_main([str(source), "--url", server.url, "--scale", "2", "--format", "avif", "--metadata", "strip",
                     "-o", str(tmp_path / "out"), "-q"])
    assert code == 0 and not exif_of((tmp_path / "out" / "phone_x2.avif").read_bytes())


def test_metadata_is_checked_before_sending():
    with SRClient("http://sr.test", transport=httpx.MockTransport(lambda r: httpx.Response(500))) as client, \
            pytest.raises(ValueError, match="metadata must be one of keep, nogps, strip"):
        client.upscale(png_bytes(4, 4), metadata="some")


def test_upscale_async_concurrent(server: ServiceProcess):
    async def run() -> list:
        async with AsyncSRClient(server.url) as client:
            return await asyncio.gather(*(client.upscale(png_bytes(12, 10, seed), scale=s)
                                          for seed, s in enumerate((2, 3))))

    first, second = asyncio.run(run())
    assert image_size(first.content) == (24, 20) and first.model == "as"
    assert image_size(second.content) == (36, 30) and second.model == "as"


def test_problem_json_becomes_sr_error(server: ServiceProcess, tmp_path: Path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with SRClient(server.url) as client, pytest.raises(SRError) as caught:
        client.upscale(not_an_image, scale=2)
    err = caught.value
    assert err.status == 415 and err.title == "Not a supported image"
    assert "not a recognised image format" in err.detail
    assert err.request_id and err.type.endswith("/unsupported-media-type")
    assert not err.retryable


def test_bad_scale_is_not_retried(server: ServiceProcess):
    seen: list[RetryEvent] = []
    with SRClient(server.url, on_retry=seen.append) as client, pytest.raises(SRError) as caught:
        client.upscale(png_bytes(8, 8), scale=50)
    assert caught.value.status == 400 and "maximum" in caught.value.detail
    assert seen == []


def test_async_error_is_sr_error(server: ServiceProcess):
    async def run() -> None:
        async with AsyncSRClient(server.url) as client:
            await client.upscale(b"GIF89a but not really", scale=2)

    with pytest.raises(SRError) as caught:
        asyncio.run(run())
    assert caught.value.status in (415, 422) and caught.value.detail


# --- folders --------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    root.mkdir()
    for i, (w, h) in enumerate([(16, 12), (10, 10), (14, 8), (9, 13), (12, 16)]):
        (root / f"img{i}.png").write_bytes(png_bytes(w, h, i))
    (root / "readme.txt").write_text("not an image")
    return root


def test_upscale_folder_writes_every_image(server: ServiceProcess, tmp_path: Path):
    src = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = upscale_folder([src], out, url=server.url, concurrency=3, scale=2, progress=False)
    assert summary.ok, summary.failed
    assert [p.name for p in summary.written] == [f"img{i}_x2.png" for i in range(5)]
    assert list(summary.skipped) == [src / "readme.txt"]
    assert summary.skipped[src / "readme.txt"].startswith("not an image file name")
    for i in range(5):
        w, h = image_size((src / f"img{i}.png").read_bytes())
        assert image_size((out / f"img{i}_x2.png").read_bytes()) == (2 * w, 2 * h)
    assert not list(out.glob(".*.part"))


def test_upscale_folder_beside_inputs_and_rerun(server: ServiceProcess, tmp_path: Path):
    src = make_folder(tmp_path / "in")
    first = upscale_folder([src], url=server.url, concurrency=2, scale=3.3, format="jpeg", progress=False)
    assert first.ok and len(first.written) == 5
    assert image_size((src / "img0_x3.3.jpeg").read_bytes()) == (53, 40)  # round(16*3.3) x round(12*3.3)

    # A rerun over the same folder skips its own outputs and, asked to, the files already written.
    second = upscale_folder([src], url=server.url, scale=3.3, format="jpeg", overwrite=False, progress=False)
    assert second.ok and second.written == []
    assert sorted(p.name for p in second.existing) == [f"img{i}_x3.3.jpeg" for i in range(5)]
    assert {p.name for p in second.skipped} == {"readme.txt"} | {f"img{i}_x3.3.jpeg" for i in range(5)}
    assert second.skipped[src / "img0_x3.3.jpeg"] == "an output of this run"


def test_upscale_folder_reports_failures_and_goes_on(server: ServiceProcess, tmp_path: Path):
    src = make_folder(tmp_path / "in")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    summary = upscale_folder([src], tmp_path / "out", url=server.url, concurrency=4, progress=False)
    assert list(summary.failed) == [src / "broken.png"]
    assert len(summary.written) == 5 and not summary.ok


def test_cli_writes_outputs(server: ServiceProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    src = make_folder(tmp_path / "in")
    code = cli_main([str(src / "img0.png"), str(src / "img1.png"), "--url", server.url, "--scale", "2",
                     "-o", str(tmp_path / "out"), "--concurrency", "2", "-q"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0_x2.png", "img1_x2.png"]
    assert "2 written" in capsys.readouterr().err


def test_cli_names_every_skipped_file_and_why(server: ServiceProcess, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]):
    src = make_folder(tmp_path / "in")
    (src / "nested").mkdir()
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    code = cli_main([str(src), "--url", server.url, "-o", str(tmp_path / "out"), "-q"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"skipped: {src / 'readme.txt'}: not an image file name (sends .avif, .bmp, .gif, .heic, .heif, .jpeg" in err
    assert f"skipped: {src / 'nested'}: a folder (-r descends into sub-folders)" in err
    assert f"skipped: {src / '.DS_Store'}: a hidden file" in err
    assert "5 written, 3 skipped, 0 failed" in err


def test_cli_rejects_scale_with_width():
    with pytest.raises(SystemExit) as caught:
        cli_main(["a.png", "--scale", "2", "--width", "100"])
    assert caught.value.code == 2


# --- admission: 429 with Retry-After, API keys ---------------------------------------------


@pytest.fixture(scope="module")
def strict_server(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One upload and one request at a time, no queue, so a second concurrent request gets 429; API key
    required; a held upload is not let go for being slow."""
    with live_server(weights_dir, tmp_path_factory.mktemp("strict"), models="x2", max_concurrent="1",
                     queue_size="0", max_uploads="1", client_grace_s="60", api_keys="sekrit") as live:
        yield live


def uploads_in_progress(server: ServiceProcess) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("imdn_uploads_in_progress "):
                return float(line.split()[1])
    return 0.0


class HeldUpload:
    """A request whose body arrives only when told: it holds the service's one upload place (IMDN_MAX_UPLOADS=1)
    for as long as the test likes, at no CPU cost, unlike a large image, whose duration would depend on how
    busy the machine is.
    """

    def __init__(self, server: ServiceProcess, body: bytes, api_key: str) -> None:
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        head = (f"POST /v1/superresolve?scale=2 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                f"X-API-Key: {api_key}\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n")
        self.sock.sendall(head.encode() + body[: len(body) // 2])

    def release(self) -> None:
        self.sock.sendall(self.body[len(self.body) // 2 :])

    def status(self) -> int:
        reply = b""
        while b"\r\n" not in reply and (chunk := self.sock.recv(4096)):
            reply += chunk
        self.sock.close()
        return int(reply.split(b" ", 2)[1])


def test_retries_429_until_the_slot_frees(strict_server: ServiceProcess):
    held = HeldUpload(strict_server, png_bytes(16, 16), "sekrit")
    deadline = time.monotonic() + 10
    while uploads_in_progress(strict_server) < 1:
        assert time.monotonic() < deadline, "the held upload never started"
        time.sleep(0.05)

    seen: list[RetryEvent] = []

    def on_retry(event: RetryEvent) -> None:
        seen.append(event)
        if len(seen) == 1:
            held.release()  # the service finishes the held request while the client waits out Retry-After

    policy = RetryPolicy(attempts=4, max_wait=5, jitter=0.2)
    with SRClient(strict_server.url, api_key="sekrit", retry=policy, on_retry=on_retry) as client:
        started = time.monotonic()
        result = client.upscale(png_bytes(10, 10), scale=2)
        waited = time.monotonic() - started

    assert image_size(result.content) == (20, 20)
    assert held.status() == 200
    assert seen and seen[0].error.status == 429 and "retry" in seen[0].error.detail
    retry_after = seen[0].error.retry_after
    assert retry_after is not None and retry_after > 0
    wait = min(retry_after, policy.max_wait)  # Retry-After honoured, within the policy's cap and jitter
    assert wait <= seen[0].delay <= wait + policy.jitter
    assert waited >= wait
    assert result.attempts == len(seen) + 1


def test_api_key_required(strict_server: ServiceProcess):
    with SRClient(strict_server.url, retry=RetryPolicy(attempts=1)) as client, pytest.raises(SRError) as caught:
        client.upscale(png_bytes(8, 8), scale=2)
    assert caught.value.status == 401
    with SRClient(strict_server.url, api_key="sekrit") as client:
        assert client.models()["models"][0]["name"] == "x2"


# --- retry arithmetic and 503 handling, without a server ----------------------------------------


def test_parse_retry_after_forms():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = (now + timedelta(seconds=7)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(later, now=now) == 7.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_retry_delay_caps_and_jitter():
    policy = RetryPolicy(backoff=0.5, max_wait=4, jitter=0.25)
    for _ in range(50):
        assert 4 <= policy.delay(1, retry_after=600) <= 4.25  # a huge Retry-After is capped
        assert 1 <= policy.delay(2, retry_after=None) <= 1.25  # backoff 0.5 * 2**(2-1)


def test_parse_server_timing():
    header = 'decode;dur=6.5, queue;dur=0.1;desc="wait", inference;dur=24.1, bad;dur=x, encode;dur=0.8'
    assert parse_server_timing(header) == {"decode": 6.5, "queue": 0.1, "inference": 24.1, "encode": 0.8}


def test_async_client_retries_503_then_succeeds():
    calls: list[int] = []
    png = png_bytes(4, 4)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        assert request.headers["x-api-key"] == "k"
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0", "Content-Type": "application/problem+json"},
                                  json={"title": "Service not ready", "detail": "warming up", "status": 503})
        return httpx.Response(200, content=png, headers={"Content-Type": "image/png", "X-Model": "x2"})

    async def run():
        async with AsyncSRClient("http://sr.test", api_key="k", transport=httpx.MockTransport(handler),
                                 retry=RetryPolicy(attempts=3, jitter=0)) as client:
            return await client.upscale(b"...", scale=2)

    result = asyncio.run(run())
    assert result.content == png and result.attempts == 3 and len(calls) == 3


def test_gives_up_after_the_last_attempt():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "0"}, json={"title": "Too many requests queued",
                                                                         "detail": "busy"})

    with SRClient("http://sr.test", transport=httpx.MockTransport(handler),
                  retry=RetryPolicy(attempts=2, jitter=0)) as client, pytest.raises(SRError) as caught:
        client.upscale(b"...", scale=2)
    assert caught.value.status == 429 and caught.value.detail == "busy"


def test_non_json_error_body():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    with SRClient("http://sr.test", transport=httpx.MockTransport(handler)) as client, \
            pytest.raises(SRError) as caught:
        client.upscale(b"...")
    assert caught.value.status == 502 and caught.value.title == "Bad Gateway"
    assert "Bad Gateway" in caught.value.detail
