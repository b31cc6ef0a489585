"""What the app holds while it runs: the pool, its description, admission control and readiness."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import torch
from fastapi import Depends, Request

from model.backends import OnnxRunner, TorchRunner, pick_device, uses_onnx
from model.engine import Upscaler
from model.imdn import count_parameters
from model.parts import PART_WINDOW, part_window_for
from model.plan import network_of
from model.runner import Runner
from model.tiled import tile_core
from model.tiling import AS_CONTEXT, IMDN_CONTEXT
from model.weights import camera_weights, file_sha256, load_model, resolve_weights
from service.config import Settings
from service.metrics import Metrics
from service.pool import Backend, ModelPool

if TYPE_CHECKING:
    from service.admission import Admission
    from service.results import ResultCache
    from service.sources import SourceFetcher

log = logging.getLogger("service")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_BUDGET_MB = 512
# Tiles past ~1000 px buy little GPU speed (an H200 runs a 1024x1024 x2 tile at 25 TFLOP/s, bench/backends.py),
# but a quarter of a big card made a 2048x2048 request one band: no streaming, 14 GB held per replica.
GPU_BUDGET_CAP_MB = 2048


@dataclass
class ModelInfo:
    name: str
    scale: str
    parameters: int
    weights: str  # the file's name: where it lies on the server is nobody's business
    sha256: str
    load_seconds: float


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    pool: ModelPool | None = None
    models: list[ModelInfo] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    backend: str = ""
    budget_bytes: int = 0
    parts_budget_bytes: int = 0  # what IMDN_AS's parts plan within (parts_budget)
    activation_bytes: int = 0  # host memory the replicas may take for tiles, whatever the requests
    ready: bool = False
    draining: bool = False
    startup_error: str | None = None
    admission: Admission | None = None
    # IMDN_WORKERS > 1: one flag per worker in shared memory, and this worker's index into it.
    worker_flags: MutableSequence[int] | None = None
    worker_index: int = 0
    uploads: int = 0  # request bodies being received
    # Set when the drain deadline passes: requests not yet streaming get 503, streams are cut.
    drain_expired: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    sources: SourceFetcher | None = None  # IMDN_SOURCE_ALLOW set: fetching by URL (service/sources.py)
    results: ResultCache | None = None  # IMDN_RESULT_CACHE_MB > 0 (service/results.py)

    @property
    def model_names(self) -> list[str]:
        """Every model a plan may use: IMDN_MODELS and the cameras (as:NAME)."""
        return [info.name for info in self.models]

    def is_ready(self) -> bool:
        return self.ready and not self.draining and self.pool is not None and self.pool.alive()

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        serving = int(ready and not self.draining)  # a pool that finishes warming during a drain stays out
        self.metrics.ready.set(serving)
        if self.worker_flags is not None:
            self.worker_flags[self.worker_index] = serving

    def workers_warming(self) -> int:
        """Other workers on this port that are not (or no longer) ready; /readyz waits for all of them."""
        if self.worker_flags is None:
            return 0
        return sum(1 for i, flag in enumerate(self.worker_flags) if i != self.worker_index and not flag)

    def start_drain(self) -> None:
        """Stop being ready; in drain_timeout_s, end what is still running. Safe from a signal handler: it takes
        no lock. prometheus_client's locks are not reentrant (with IMDN_WORKERS, one lock for every metric), so a
        handler that set the gauge while the interrupted code held the lock waited for itself forever: a worker
        hung that way on a SIGTERM that came as a request's metrics were counted. The gauge is set on the loop."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        if self.worker_flags is not None:
            self.worker_flags[self.worker_index] = 0  # shared memory without a lock
        if self.loop is not None and self.drain_expired is not None:
            expired = self.drain_expired
            delay = self.settings.drain_timeout_s
            loop = self.loop

            def on_loop() -> None:
                self.metrics.ready.set(0)
                loop.call_later(delay, expired.set)

            loop.call_soon_threadsafe(on_loop)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]  # the app's state, as an endpoint's parameter


def parse_devices(spec: str) -> list[torch.device]:
    if spec == "auto":
        return [pick_device("auto")] if not torch.cuda.is_available() else [
            torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if spec == "cuda":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())] or [pick_device("cuda")]
    return [pick_device(part.strip()) for part in spec.split(",") if part.strip()]


# ONNX Runtime's shared arena may hold this many times the activation budget per CPU replica before
# it hands its free buffers back (model.backends.OnnxRunner). One budget holds the largest tile
# (IMDN's 191k px windows, IMDN_AS's 2.2 MP ones), but barely: beside the fragments of the other tile
# shapes of an image (a thin first row, the statistics' samples) a 16 MP x2 image filled a 1.0x arena
# twice, and each time the arena was handed back and faulted in again (21.5 s against 20.4
# with 1.25x; 11 MP: 14.9-16.3 s against 13.9). 1.5 let fragments pile up to 200 MB more at 64 MP
# (bench/service.py memory).
ARENA_PER_BUDGET = 1.25


def arena_limit(budget_bytes: int, cpu_replicas: int = 1) -> int:
    """The cap on ONNX Runtime's shared arena for `cpu_replicas` replicas with this activation budget each."""
    return int(ARENA_PER_BUDGET * budget_bytes) * cpu_replicas


def parts_budget(budget_bytes: int, runners: list[Runner]) -> int:
    """What IMDN_AS's parts plan their maps and bands within: ONNX Runtime's arena cap per replica where it
    runs every replica (a replica is sized for that much anyway), else the budget. At 512 MB the head's
    output is then held up to ~19 MP instead of ~15, and the parts reach ~25 MP instead of ~19
    (bench/service.py memory: 16 MP 1125 MB in 8.3 s against 997 MB in 8.7 s; 23 MP 1192 MB in 11.9 s
    against 1074 MB in 22.6 s tiled)."""
    return arena_limit(budget_bytes) if all(isinstance(r, OnnxRunner) for r in runners) else budget_bytes


def part_window(devices: list[str]) -> tuple[int, int] | None:
    """IMDN_AS's part windows for a pool of replicas on these devices: whole bands if a GPU runs any."""
    windows = [part_window_for(torch.device(device)) for device in devices]
    return None if None in windows else PART_WINDOW


def memory_budget(settings: Settings, device: torch.device) -> int:
    if settings.memory_budget_mb:
        return settings.memory_budget_mb * 2**20
    if device.type == "cuda":  # a quarter of the card per replica leaves room for the caching allocator
        replicas = settings.replicas_per_device * settings.workers
        share = torch.cuda.get_device_properties(device).total_memory * 0.25 / replicas
        return int(min(share, GPU_BUDGET_CAP_MB * 2**20))
    return CPU_BUDGET_MB * 2**20


def model_files(settings: Settings) -> dict[str, Path]:
    """Every model the service serves and its weights file: IMDN_MODELS from IMDN_WEIGHTS, then each camera
    of IMDN_CAMERAS as 'as:NAME'."""
    files = {name: resolve_weights(settings.weights, name) for name in settings.models}
    return files | camera_weights(settings.cameras)


def check_weights(settings: Settings) -> list[ModelInfo]:
    """Load each configured model once: missing or corrupt weights fail here, in well under a second,
    before the server binds its port. Raises WeightsError naming the file."""
    infos = []
    for name, path in model_files(settings).items():
        started = time.perf_counter()
        model = load_model(name, path)
        scale = name if network_of(name) != "as" else "any (bicubic pre-scaling)"
        if name not in settings.models:
            scale += ", calibrated to a camera"
        infos.append(ModelInfo(name, scale, count_parameters(model), path.name, file_sha256(path),
                               time.perf_counter() - started))
    return infos


def build_pool(settings: Settings, metrics: Metrics, state: ServiceState) -> ModelPool:
    """Put every model on every device (x replicas), warm them, and start the pool (after check_weights)."""
    devices = parse_devices(settings.device)
    threads = settings.threads or os.cpu_count() or 1
    cpu_replicas = settings.replicas_per_device if any(d.type == "cpu" for d in devices) else 1
    torch.set_num_threads(max(1, threads // cpu_replicas))
    backends: list[tuple[str, Backend]] = []
    for device in devices:
        for replica in range(settings.replicas_per_device):
            models = {name: load_model(name, path) for name, path in model_files(settings).items()}
            if uses_onnx(device, settings.backend):
                # Room for each replica's largest tile and the fragments of other tile shapes beside it.
                limit = arena_limit(memory_budget(settings, device), cpu_replicas)
                backend: Backend = OnnxRunner(models, threads=max(1, threads // cpu_replicas), arena_limit_bytes=limit)
                state.backend = "onnxruntime"
            else:
                dtype = None if settings.precision == "auto" else DTYPES[settings.precision]
                backend = TorchRunner(models, device, dtype)
                state.backend = f"torch-{str(backend.dtype).removeprefix('torch.')}"
            backends.append((f"{device}#{replica}", backend))
    state.devices = [str(d) for d in devices]
    state.budget_bytes = memory_budget(settings, devices[0])
    state.parts_budget_bytes = parts_budget(state.budget_bytes, [backend for _, backend in backends])
    # ONNX Runtime's capped arena per CPU replica; PyTorch's tiles within the budget; a GPU's are on the GPU.
    state.activation_bytes = sum(arena_limit(state.budget_bytes) if isinstance(b, OnnxRunner) else state.budget_bytes
                                 for (name, b) in backends if name.startswith("cpu"))
    pool = ModelPool(backends, settings.max_batch, settings.max_wait_ms / 1000, metrics.observe_batch)
    if settings.warmup:
        warm(pool, settings, state)
    for info in state.models:
        metrics.model_load.labels(info.name).set(info.load_seconds)
    return pool


# A 256x256 IMDN_AS output (15.7 MB in one pass) runs in parts under these budgets: with the tail
# recomputing the head (8 MB), and with the head's output held for it.
PARTS_WARMUP_SIDE = 256
PARTS_WARMUP_BUDGETS = (8 * 2**20, 14 * 2**20)


def warm_any_scale_parts(runner: Runner, model: str = "as") -> None:
    """Upscale a small image with IMDN_AS `model` in parts, both ways: every part's graph is made now, not on
    the first large image."""
    for budget in PARTS_WARMUP_BUDGETS:
        parts = Upscaler(runner, budget_bytes=budget, available=[model])
        parts.upscale(np.zeros((PARTS_WARMUP_SIDE // 2, PARTS_WARMUP_SIDE // 2, 3), np.uint8),
                      width=PARTS_WARMUP_SIDE, height=PARTS_WARMUP_SIDE, model=model)


def warm(pool: ModelPool, settings: Settings, state: ServiceState) -> None:
    """Run each model once per replica at the tile shape it will see (cuDNN picks kernels per shape)."""
    gpu = any(d.startswith("cuda") for d in state.devices)
    for info in state.models:
        started = time.perf_counter()
        network = network_of(info.name)
        context = AS_CONTEXT if network == "as" else IMDN_CONTEXT
        side = 64
        if gpu:
            core = settings.tile_size or tile_core(network, state.budget_bytes, context)
            side = core + 2 * context
        side = max(8, side // 4 * 4)
        # Each replica's own backend, not the pool: through the pool, whichever replica is idle first could
        # take every warm-up call and leave another to pay for its graphs on a user's first large image.
        for replica in pool.replicas:
            replica.backend(info.name, torch.rand(1, 3, side, side))
            if network == "as" and state.backend == "onnxruntime":  # PyTorch has no graphs to make
                warm_any_scale_parts(replica.backend, info.name)
        info.load_seconds += time.perf_counter() - started
        log.info("model %s loaded and warm in %.2f s", info.name, info.load_seconds)
