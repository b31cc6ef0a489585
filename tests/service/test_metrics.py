"""Prometheus metrics: one registry per app, every family prefixed imdn_, batches counted as tiles."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import GPUMemoryCollector, Metrics


def families(metrics: Metrics) -> dict[str, dict[tuple, float]]:
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.exposed).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_each_app_has_its_own_registry_with_the_standard_families() -> None:
    first, second = Metrics(), Metrics()
    first.requests.labels("/v1/superresolve", "POST", "200").inc()
    assert "imdn_http_requests_total" in families(first)
    assert not families(second).get("imdn_http_requests_total")  # the other app counted nothing
    names = families(first)
    assert "process_resident_memory_bytes" in names and "python_info" in names
    own = [name for name in names if not name.startswith(("process_", "python_"))]
    assert own and all(name.startswith("imdn_") for name in own)


def test_a_batch_counts_its_tiles_and_a_part_only_its_time() -> None:
    metrics = Metrics()
    metrics.observe_batch("x2", 3, 0.2)
    metrics.observe_batch("as", 0, 0.1)  # statistics or a part of IMDN_AS: a call, no tiles
    found = families(metrics)
    assert found["imdn_tiles_total"] == {(("model", "x2"),): 3.0}
    assert found["imdn_inference_seconds_count"] == {(("model", "x2"),): 1.0, (("model", "as"),): 1.0}
    assert found["imdn_batch_size_count"][()] == 1.0


def test_gpu_memory_collector_has_no_samples_without_a_gpu() -> None:
    """Its families are declared (dashboards find them) but hold no sample for a CPU device."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the collector reports it")
    collected = list(GPUMemoryCollector([torch.device("cpu")]).collect())
    assert collected and all(f.name.startswith("imdn_gpu_") and not f.samples for f in collected)


def test_gpu_metrics_are_watched_only_where_a_gpu_runs() -> None:
    metrics = Metrics()
    metrics.watch_gpus([torch.device("cpu")])
    assert not any(name.startswith("imdn_gpu_") for name in families(metrics))
