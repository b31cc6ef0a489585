"""Security checks: limits on by default, API keys (constant-time, never logged), CORS only for
configured origins, no user-controlled paths, no pickle, and a dependency audit (pip-audit)."""

from __future__ import annotations

import ast
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from tests.reliability.reliability_support import (
    REPO,
    InProcessApp,
    RealServer,
    check_error,
    check_image,
    encode,
    make_settings,
    multipart,
    noise,
    with_png_size,
)

SMALL_PNG = encode(noise(16, 16))


# --- limits on by default -------------------------------------------------------------------------


def test_limits_on_by_default() -> None:
    defaults = {name: field.get_default(call_default_factory=True) for name, field in Settings.model_fields.items()}
    assert 0 < defaults["max_upload_bytes"] <= 64 * 2**20
    assert 0 < defaults["max_input_pixels"] <= 50_000_000
    assert 0 < defaults["max_output_pixels"] <= 256 * 2**20
    assert 1 < defaults["max_scale"] <= 16
    assert 0 < defaults["request_timeout_s"] <= 600
    assert 0 <= defaults["queue_size"] <= 64
    assert defaults["cors_origins"] == []  # no cross-origin access unless configured
    assert defaults["api_keys"] == []  # open by default: deployments set IMDN_API_KEYS (docs/deploy.md)
    assert "api_keys" not in repr(Settings(_env_file=None, api_keys=["hunter2-secret"]))  # type: ignore[call-arg]
    assert "hunter2-secret" not in repr(Settings(_env_file=None, api_keys=["hunter2-secret"]))  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def default_app(weights_dir: Path) -> Iterator[InProcessApp]:
    """Every limit at its default; only the weights, device and threads are set."""
    app = InProcessApp(make_settings(weights_dir, models=["x2"]))
    yield app
    app.close()


def test_default_limits_enforced(default_app: InProcessApp) -> None:
    # A bomb header: refused from the header.
    check_error(default_app.upscale(with_png_size(SMALL_PNG, 65535, 65535)), {413})

    # A declared body over the default upload limit: refused before it is read.
    async def little() -> object:
        yield b"\x00" * 1024

    too_big = str(Settings.model_fields["max_upload_bytes"].default + 1)
    response = default_app.upscale(little(), headers={"content-length": too_big})  # type: ignore[arg-type]
    check_error(response, {413})
    # Scale above the maximum.
    check_error(default_app.upscale(SMALL_PNG, "scale=17"), {400})


# --- API keys -------------------------------------------------------------------------------------

KEY = "sk-reliability-" + uuid.uuid4().hex
OTHER_KEY = "sk-second-" + uuid.uuid4().hex


def test_api_key_comparison_is_constant_time() -> None:
    """Read the code: each configured key is compared with hmac.compare_digest, and no early exit."""
    from service import security

    source = inspect.getsource(security.require_api_key)
    assert "hmac.compare_digest" in source
    tree = ast.parse(textwrap.dedent(source))
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)
                and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in n.ops)
                and any("key" in ast.unparse(side).lower() or "offered" in ast.unparse(side)
                        for side in [n.left, *n.comparators])]
    assert not compares, f"keys compared with ==/!=: {[ast.unparse(c) for c in compares]}"
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For)]
    assert loops and not any(isinstance(n, (ast.Break, ast.Return)) for loop in loops for n in ast.walk(loop)), \
        "the key loop exits early: the time would say which key matched"


@pytest.fixture(scope="module")
def keyed_app(weights_dir: Path) -> Iterator[InProcessApp]:
    app = InProcessApp(make_settings(weights_dir, models=["x2"], api_keys=[KEY, OTHER_KEY]))
    yield app
    app.close()


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"x-api-key": "wrong"}, 401),
    ({"x-api-key": KEY[:-1]}, 401),
    ({"x-api-key": KEY + "x"}, 401),
    ({"authorization": f"Basic {KEY}"}, 401),
    ({"x-api-key": KEY}, 200),
    ({"x-api-key": OTHER_KEY}, 200),
    ({"authorization": f"Bearer {KEY}"}, 200),
])
def test_api_keys_enforced(keyed_app: InProcessApp, headers: dict, status: int) -> None:
    response = keyed_app.upscale(SMALL_PNG, "scale=2", headers=headers)
    if status == 200:
        check_image(response, (32, 32))
    else:
        check_error(response, {401})
        assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
        assert KEY not in response.text and OTHER_KEY not in response.text


def test_probes_and_metrics_need_no_key(keyed_app: InProcessApp) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert keyed_app.request("GET", path).status_code == 200, path
    check_error(keyed_app.request("GET", "/v1/models"), {401})
    assert keyed_app.request("GET", "/v1/models", headers={"x-api-key": KEY}).status_code == 200


def test_request_id_is_sanitised(keyed_app: InProcessApp) -> None:
    """A caller's request id is echoed only if it is short and printable (no log or header injection)."""
    for bad in ("abc\x1b[31mred", "x" * 500):
        response = keyed_app.request("GET", "/healthz", headers={"x-request-id": bad})
        assert response.headers["x-request-id"] != bad
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert keyed_app.request("GET", "/healthz", headers={"x-request-id": "trace-42"}).headers["x-request-id"] \
        == "trace-42"


def test_api_key_never_logged(weights_dir: Path, workdir: Path) -> None:
    """A real process with JSON logs; requests carry the key (header, bearer, even the query string) and
    wrong keys; the log has the requests but none of the secrets."""
    wrong = "sk-wrong-" + uuid.uuid4().hex
    with RealServer(weights_dir, workdir, IMDN_MODELS="x2", IMDN_API_KEYS=f"{KEY},{OTHER_KEY}",
                    IMDN_LOG_FORMAT="json", IMDN_LOG_LEVEL="debug") as server:
        server.wait_ready()
        url = f"{server.url}/v1/superresolve"
        png = {"content-type": "image/png"}
        assert httpx.post(url + "?scale=2", content=SMALL_PNG, headers={**png, "x-api-key": KEY},
                          timeout=15).status_code == 200
        assert httpx.post(url, content=SMALL_PNG, headers={**png, "authorization": f"Bearer {OTHER_KEY}"},
                          timeout=15).status_code == 200
        assert httpx.post(url, content=SMALL_PNG, headers={**png, "x-api-key": wrong}, timeout=15).status_code == 401
        assert httpx.post(url + f"?api_key={KEY}", content=SMALL_PNG, headers=png, timeout=15).status_code == 401
        assert httpx.get(f"{server.url}/v1/models", headers={"x-api-key": KEY}, timeout=15).status_code == 200
        server.stop()
        log = server.output()
    lines = [line for line in log.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    statuses = [r.get("status") for r in records if r.get("message") == "request"]
    assert statuses.count(200) >= 3 and statuses.count(401) >= 2, statuses
    for secret in (KEY, OTHER_KEY, wrong):
        assert secret not in log, f"a key appears in the log: {[line for line in lines if secret in line][:2]}"


# --- CORS -----------------------------------------------------------------------------------------

GOOD = "https://app.example.com"
EVIL = "https://evil.example.net"


@pytest.fixture(scope="module")
def cors_app(weights_dir: Path) -> Iterator[InProcessApp]:
    app = InProcessApp(make_settings(weights_dir, models=["x2"], cors_origins=[GOOD]))
    yield app
    app.close()


def preflight(app: InProcessApp, origin: str) -> httpx.Response:
    return app.request("OPTIONS", "/v1/superresolve", headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-api-key"})


def test_cors_configured_origin(cors_app: InProcessApp) -> None:
    response = preflight(cors_app, GOOD)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == GOOD
    posted = cors_app.upscale(SMALL_PNG, "scale=2", headers={"origin": GOOD})
    check_image(posted, (32, 32))
    assert posted.headers["access-control-allow-origin"] == GOOD
    assert "x-output-size" in posted.headers["access-control-expose-headers"].lower()


def test_cors_other_origin_refused(cors_app: InProcessApp) -> None:
    response = preflight(cors_app, EVIL)
    assert response.status_code >= 400
    assert "access-control-allow-origin" not in response.headers
    posted = cors_app.upscale(SMALL_PNG, "scale=2", headers={"origin": EVIL})
    assert "access-control-allow-origin" not in posted.headers
    assert "access-control-allow-credentials" not in posted.headers


def test_no_cors_by_default(default_app: InProcessApp) -> None:
    for origin in (GOOD, EVIL, "null"):
        response = preflight(default_app, origin)
        assert "access-control-allow-origin" not in response.headers, origin
        posted = default_app.upscale(SMALL_PNG, "scale=2", headers={"origin": origin})
        assert "access-control-allow-origin" not in posted.headers


# --- no user-controlled file paths ----------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini",
                                      "a\x00b.png", "%2e%2e%2fetc%2fpasswd", "x" * 1000])
def test_multipart_filename_has_no_effect(default_app: InProcessApp, tmp_path: Path, filename: str) -> None:
    body, content_type = multipart([("image", filename, "image/png", SMALL_PNG)])
    response = default_app.upscale(body, "scale=2", content_type=content_type)
    check_image(response, (32, 32))
    assert response.headers["content-disposition"] == 'inline; filename="upscaled.png"'
    assert "passwd" not in response.headers["content-disposition"]


def test_filename_cannot_create_files(default_app: InProcessApp, tmp_path: Path) -> None:
    target = tmp_path / f"planted-{uuid.uuid4().hex}.png"
    relative = "../" * 12 + str(target).lstrip("/")
    for name in (str(target), relative):
        body, content_type = multipart([("image", name, "image/png", SMALL_PNG)])
        check_image(default_app.upscale(body, "scale=2", content_type=content_type), (32, 32))
    assert not target.exists()


def test_service_never_opens_request_paths() -> None:
    """Read the code: the service opens no file from request data (its only files: static page, weights)."""
    for path in sorted((REPO / "service").glob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"\b(open|FileResponse|Path)\(([^)]*)\)", text):
            argument = match.group(2)
            assert not re.search(r"filename|request|form|params|query", argument), \
                f"{path.name}: {match.group(0)}"


# --- weights without pickle ---------------------------------------------------------------------------


def test_weights_loaded_without_pickle() -> None:
    """Every torch.load in model/ and service/ passes weights_only=True; nothing unpickles directly."""
    calls = []
    for path in sorted([*(REPO / "model").rglob("*.py"), *(REPO / "service").rglob("*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name.endswith(("pickle.load", "pickle.loads", "dill.load", "joblib.load")):
                pytest.fail(f"{path}:{node.lineno}: {name} unpickles")
            if name in ("np.load", "numpy.load"):
                allow = next((k for k in node.keywords if k.arg == "allow_pickle"), None)
                assert allow is None or ast.unparse(allow.value) == "False", f"{path}:{node.lineno}: {name}"
            if name == "torch.load":
                weights_only = next((k for k in node.keywords if k.arg == "weights_only"), None)
                assert weights_only is not None and ast.unparse(weights_only.value) == "True", \
                    f"{path}:{node.lineno}: torch.load without weights_only=True"
                calls.append(f"{path.name}:{node.lineno}")
            if name in ("torch.jit.load", "torch.package.PackageImporter"):
                pytest.fail(f"{path}:{node.lineno}: {name} can run code")
    assert calls, "no torch.load found: the check is looking at the wrong place"


# --- dependency audit -------------------------------------------------------------------------------------


def pinned_requirements(out: Path) -> Path:
    """Every exact pin of the project (constraints.txt, requirements-deploy.txt) as one requirements file."""
    pins = []
    for name in ("constraints.txt", "requirements-deploy.txt"):
        path = REPO / name
        if path.is_file():
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if "==" in line:
                    pins.append(line)
    assert pins, "no pinned requirements found"
    out.write_text("\n".join(pins) + "\n")
    return out


def test_pip_audit_pinned_requirements(tmp_path: Path) -> None:
    """pip-audit (PyPI's vulnerability data) over every pinned requirement: no known vulnerability.

    Skips, saying why, when pip-audit is missing or the vulnerability service cannot be reached or
    answers for none of the packages (e.g. only a registry mirror is reachable)."""
    if shutil.which("pip-audit") is None and subprocess.run([sys.executable, "-m", "pip_audit", "--version"],
                                                            capture_output=True).returncode != 0:
        pytest.skip("pip-audit is not installed (pip install pip-audit)")
    requirements = pinned_requirements(tmp_path / "pins.txt")
    report = tmp_path / "audit.json"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps", "--disable-pip",
             "--vulnerability-service", "pypi", "--progress-spinner", "off", "--format", "json",
             "--output", str(report), "--timeout", "20"],
            capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("pip-audit: the vulnerability service did not answer within 240 s")
    if not report.is_file():
        if re.search(r"connection|resolve|network|timed out|ssl", done.stderr, re.IGNORECASE):
            pytest.skip(f"pip-audit: vulnerability service unreachable: {done.stderr.strip()[-300:]}")
        pytest.fail(f"pip-audit failed (exit {done.returncode}): {done.stderr[-2000:]}")
    dependencies = json.loads(report.read_text())["dependencies"]
    vulnerable = {f"{d['name']}=={d['version']}": [v["id"] for v in d["vulns"]]
                  for d in dependencies if d.get("vulns")}
    assert not vulnerable, f"known vulnerabilities: {vulnerable}"
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        pytest.skip(f"pip-audit could audit none of the {len(dependencies)} pinned packages: PyPI's per-version "
                    f"JSON API answered none of them (e.g. '{dependencies[0].get('skip_reason')}'); "
                    "the vulnerability data is unreachable from here")
