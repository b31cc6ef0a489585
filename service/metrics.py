"""Prometheus metrics: one registry per app, names prefixed ``imdn_``, base units, low-cardinality labels."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import torch
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Up to two minutes: large images at x4 on a CPU take that long.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GPUMemoryCollector(Collector):
    """GPU memory per device, read at scrape time; registered only when CUDA is present."""

    def __init__(self, devices: list[torch.device], torch_stats: bool = True) -> None:
        self.devices = [d for d in devices if d.type == "cuda"]
        # PyTorch's figures are per process: with several workers only NVML's device-wide ones mean anything.
        self.torch_stats = torch_stats
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
        except Exception:  # noqa: BLE001 - NVML is optional: without it the total/used gauges are absent
            self.nvml = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "allocated": GaugeMetricFamily("imdn_gpu_memory_allocated_bytes", "Tensor memory allocated by PyTorch",
                                           labels=["device"]),
            "reserved": GaugeMetricFamily("imdn_gpu_memory_reserved_bytes", "Memory held by PyTorch's caching "
                                          "allocator", labels=["device"]),
            "peak": GaugeMetricFamily("imdn_gpu_memory_peak_bytes", "Peak tensor memory since start",
                                      labels=["device"]),
        }
        nvml_total = GaugeMetricFamily("imdn_gpu_memory_total_bytes", "Device memory (NVML)", labels=["device"])
        nvml_used = GaugeMetricFamily("imdn_gpu_memory_used_bytes", "Device memory in use, all processes (NVML)",
                                      labels=["device"])
        for device in self.devices:
            label = [str(device)]
            if self.torch_stats:
                families["allocated"].add_metric(label, torch.cuda.memory_allocated(device))
                families["reserved"].add_metric(label, torch.cuda.memory_reserved(device))
                families["peak"].add_metric(label, torch.cuda.max_memory_allocated(device))
            if self.nvml is not None:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                nvml_total.add_metric(label, info.total)
                nvml_used.add_metric(label, info.used)
        if self.torch_stats:
            yield from families.values()
        if self.nvml is not None:
            yield nvml_total
            yield nvml_used


def multiprocess_dir() -> str | None:
    """Set (by the IMDN_WORKERS supervisor) when every worker writes its metrics to files there."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that reads and sums every worker's metric files at each scrape."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)
    return registry


def serve_metrics(port: int, host: str, registry: CollectorRegistry) -> bool:
    """IMDN_METRICS_PORT: /metrics on its own port, in a daemon thread; False (and a log line) if it cannot bind."""
    try:
        start_http_server(port, host, registry=registry)
    except OSError as exc:
        logging.getLogger("service").error("cannot serve metrics on %s:%d: %s", host, port, exc)
        return False
    return True


class Metrics:
    """The service's metrics. Gauges say how they combine across IMDN_WORKERS processes (multiprocess_mode)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        shared = multiprocess_dir()
        # What /metrics exposes: this registry alone, or the sum over all workers' files.
        self.exposed = multiprocess_registry(shared) if shared else self.registry
        r = self.registry
        # The standard families operators expect (process_resident_memory_bytes, process_cpu_seconds_total,
        # process_open_fds, python_info, python_gc_*): the default registry's collectors, shared read-only.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.requests = Counter("imdn_http_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("imdn_http_request_duration_seconds", "Time from request to last byte",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("imdn_queue_wait_seconds", "Time a request waited for a processing slot",
                                    buckets=FAST_BUCKETS, registry=r)
        self.inference = Histogram("imdn_inference_seconds",
                                   "Network time per call (a batch of tiles, statistics, a part of a pass)", ["model"],
                                   buckets=FAST_BUCKETS, registry=r)
        self.encode = Histogram("imdn_encode_seconds", "Encoding time per request", ["format"],
                                buckets=FAST_BUCKETS, registry=r)
        self.queue_depth = Gauge("imdn_queue_depth", "Requests admitted and waiting for a processing slot",
                                 registry=r, multiprocess_mode="livesum")
        self.uploads = Gauge("imdn_uploads_in_progress", "Request bodies being received (before admission)",
                             registry=r, multiprocess_mode="livesum")
        self.in_flight = Gauge("imdn_requests_in_flight", "Upscale requests admitted and not finished", registry=r,
                               multiprocess_mode="livesum")
        self.memory_reserved = Gauge("imdn_memory_reserved_bytes", "Estimated peak memory of the requests running "
                                     "(model/memory.py), within imdn_memory_limit_bytes", registry=r,
                                     multiprocess_mode="livesum")
        self.memory_limit = Gauge("imdn_memory_limit_bytes", "Memory for requests (IMDN_MEMORY_LIMIT_MB or derived)",
                                  registry=r, multiprocess_mode="livesum")
        self.tiles = Counter("imdn_tiles", "Tiles run through a network", ["model"], registry=r)
        self.output_pixels = Counter("imdn_output_pixels", "Output pixels produced", ["model"], registry=r)
        self.frames = Counter("imdn_frames", "Frames upscaled (1 per still image; each frame of an animation)",
                              ["format"], registry=r)
        self.batch_size = Histogram("imdn_batch_size", "Tiles per network call", buckets=(1, 2, 4, 8, 16, 32, 64),
                                    registry=r)
        self.model_load = Gauge("imdn_model_load_seconds", "Time to load and warm each model", ["model"],
                                registry=r, multiprocess_mode="livemax")
        self.ready = Gauge("imdn_ready", "1 when every model is loaded and warm and the service is not draining",
                           registry=r, multiprocess_mode="livemin")
        self.cut = Counter("imdn_http_responses_cut", "Responses that started but did not complete",
                           ["reason"], registry=r)  # client_closed, drain, slow_client, error
        self.result_cache = Counter("imdn_result_cache_lookups", "Result cache lookups (IMDN_RESULT_CACHE_MB)",
                                    ["result"], registry=r)  # hit, miss
        self.result_cache_bytes = Gauge("imdn_result_cache_bytes", "Encoded results held in the result cache",
                                        registry=r, multiprocess_mode="livesum")
        self.rejected = Counter("imdn_rejected_requests", "Requests refused before processing", ["reason"],
                                registry=r)

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        """One network call: `size` tiles, or 0 for another call (statistics, a part of a pass)."""
        self.inference.labels(model).observe(seconds)
        if size:
            self.tiles.labels(model).inc(size)
            self.batch_size.observe(size)

    def watch_gpus(self, devices: list[torch.device]) -> None:
        if any(d.type == "cuda" for d in devices):
            self.exposed.register(GPUMemoryCollector(devices, torch_stats=multiprocess_dir() is None))
