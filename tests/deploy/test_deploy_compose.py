"""docker-compose files, the Prometheus config and the Grafana provisioning fit together."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.conftest import REPO, check_settings, yaml

REQUIRED_METRICS = (
    "imdn_http_requests_total",
    "imdn_http_request_duration_seconds_bucket",
    "imdn_queue_depth",
    "imdn_requests_in_flight",
    "imdn_gpu_memory_allocated_bytes",
)


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load("docker-compose.yml")


def _bind_mounts(service: dict) -> list[str]:
    """Host paths of the service's bind mounts (short syntax: ./host:container[:mode])."""
    sources = [v.split(":")[0] for v in service.get("volumes", [])]
    return [s for s in sources if s.startswith((".", "/"))]


def test_compose_defines_the_stack(compose):
    services = compose["services"]
    assert {"imdn", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        assert service["healthcheck"]["test"][0] == "CMD"
        if "image" in service and "build" not in service:
            assert re.search(r":v?\d+(\.\d+)+$", service["image"]), f"{name}: pin the image tag"
    assert "8000:8000" in services["imdn"]["ports"]
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "3000:3000" in services["grafana"]["ports"]


def test_compose_imdn_service_is_hardened(compose):
    imdn = compose["services"]["imdn"]
    assert imdn["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert (REPO / imdn["build"]["context"] / imdn["build"]["dockerfile"]).is_file()
    assert imdn["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in imdn["tmpfs"])
    assert imdn["environment"]["IMDN_DEVICE"] == "cpu"
    check_settings(imdn["environment"])
    assert "/healthz" in " ".join(imdn["healthcheck"]["test"])


def test_compose_mounts_exist_and_data_volumes_are_named(compose):
    for name, service in compose["services"].items():
        for source in _bind_mounts(service):
            assert (REPO / source).exists(), f"{name} mounts missing {source}"
    named = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])} - {
        m for s in compose["services"].values() for m in _bind_mounts(s)
    }
    assert named == set(compose["volumes"]) == {"prometheus-data", "grafana-data"}


def test_gpu_override_reserves_a_gpu():
    imdn = _load("docker-compose.gpu.yml")["services"]["imdn"]
    assert imdn["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert (REPO / imdn["build"]["dockerfile"]).is_file()
    assert imdn["environment"]["IMDN_DEVICE"] == "cuda"
    check_settings(imdn["environment"])
    (device,) = imdn["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_prometheus_scrapes_imdn_every_5s():
    config = _load("docker/prometheus/prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "imdn"]
    assert job["metrics_path"] == "/metrics"
    assert job["scrape_interval"] == "5s"
    assert job["static_configs"][0]["targets"] == ["imdn:8000"]


def test_grafana_provisioning_points_at_prometheus_and_dashboard(compose):
    provisioning = REPO / "docker/grafana/provisioning"
    (datasource,) = _load(str(provisioning / "datasources/prometheus.yml"))["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = _load(str(provisioning / "dashboards/imdn.yml"))["providers"]
    # The provider path is the container path the compose file mounts the dashboards at.
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./docker/grafana/dashboards"] == provider["options"]["path"]


def test_dashboard_shows_the_key_metrics():
    dashboard = json.loads((REPO / "docker/grafana/dashboards/imdn.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in REQUIRED_METRICS:
        assert metric in exprs, f"dashboard has no panel for {metric}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}" in exprs
    assert re.search(r"sum by \(status\)", exprs), "error rate by status missing"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_request_and_error_panels_leave_out_probes():
    """/readyz is 503 during every start-up and drain; probes and scrapes are not traffic."""
    dashboard = json.loads((REPO / "docker/grafana/dashboards/imdn.json").read_text())
    panels = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in dashboard["panels"]}
    for title in ("Requests / s", "Error ratio (5xx)", "Errors by status"):
        expr = panels[title]
        for selector in re.findall(r"imdn_http_requests_total\{([^}]*)\}", expr):
            assert 'route!~"/healthz|/readyz|/metrics"' in selector, (title, selector)
    assert "imdn_rejected_requests_total" in panels["Rejected requests"]
    assert "imdn_batch_size_bucket" in panels["Batch size (tiles per network call)"]
