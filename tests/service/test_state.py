"""Per-device activation budgets: what the engine may hold per network call on each device."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from model.imdn import NUM_BLOCKS
from model.parts import PART_WINDOW
from service.config import Settings
from service.state import CPU_BUDGET_MB, GPU_BUDGET_CAP_MB, memory_budget, part_window

GIB = 2**30


@pytest.fixture
def card(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CUDA device has `total` bytes (no GPU needed: only its size is read)."""
    def set_total(total: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total))
    return set_total


def test_cpu_budget_is_fixed() -> None:
    assert memory_budget(Settings(), torch.device("cpu")) == CPU_BUDGET_MB * 2**20


def test_small_gpu_gets_a_quarter_per_replica(card) -> None:
    card(4 * GIB)
    assert memory_budget(Settings(), torch.device("cuda", 0)) == GIB
    assert memory_budget(Settings(replicas_per_device=2), torch.device("cuda", 0)) == GIB // 2


def test_big_gpu_is_capped(card) -> None:
    """A quarter of a 141 GB card would make most images one band: no streaming, GBs held idle."""
    card(141 * 10**9)
    assert memory_budget(Settings(), torch.device("cuda", 0)) == GPU_BUDGET_CAP_MB * 2**20


def test_explicit_budget_wins(card) -> None:
    card(141 * 10**9)
    assert memory_budget(Settings(memory_budget_mb=8192), torch.device("cuda", 0)) == 8192 * 2**20


def test_imdn_as_parts_run_in_cache_sized_windows_on_cpu_only() -> None:
    assert part_window(["cpu"]) == PART_WINDOW
    assert part_window(["cuda:0", "cuda:1"]) is None
    assert part_window(["cpu", "cuda:0"]) is None  # a pool with a GPU: whole bands everywhere


def every_part_graph() -> set[tuple[str, int]]:
    """IMDN_AS's part graphs, as (kind, block): the head, every block and both tails."""
    return {("head", 0), ("tail", 0), ("tail_held", 0)} | {("block", b) for b in range(NUM_BLOCKS)}


def part_graphs(runner) -> set[tuple[str, int]]:
    """The part graphs an OnnxRunner has made, keyed ("part", model, kind, block)."""
    return {key[2:] for key in runner.later_sessions if key[0] == "part"}


def test_warm_up_makes_every_part_graph_of_imdn_as() -> None:
    """Both tails (recomputing the head, and reading it held) are made at warm-up, so no request pays
    for exporting and loading a graph."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install .[onnx])")
    from model.backends import OnnxRunner
    from model.imdn import build_model
    from service.state import warm_any_scale_parts

    torch.manual_seed(0)
    runner = OnnxRunner({"as": build_model("as").eval()}, threads=1)
    warm_any_scale_parts(runner)
    assert part_graphs(runner) == every_part_graph()


def test_warm_up_reaches_every_replica() -> None:
    """Each replica makes its own part graphs at warm-up: through the pool, the same idle replica could
    take every warm-up call and leave the other to pay for its graphs on a user's first large image."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install .[onnx])")
    from model.backends import OnnxRunner
    from model.imdn import build_model
    from service.pool import ModelPool
    from service.state import warm

    torch.manual_seed(0)
    model = build_model("as").eval()
    runners = [OnnxRunner({"as": model}, threads=1) for _ in range(2)]
    pool = ModelPool([(f"cpu:{i}", runner) for i, runner in enumerate(runners)])
    state = SimpleNamespace(models=[SimpleNamespace(name="as", load_seconds=0.0)], devices=["cpu"],
                            backend="onnxruntime", budget_bytes=CPU_BUDGET_MB * 2**20)
    try:
        warm(pool, Settings(), state)  # type: ignore[arg-type]
    finally:
        pool.close()
    for runner in runners:
        assert part_graphs(runner) == every_part_graph()


def test_start_drain_takes_no_metric_lock() -> None:
    """start_drain runs in a signal handler, which interrupts whatever the main thread was doing: if that held
    a metric's lock (prometheus_client's are not reentrant), setting a gauge there waited forever (a worker
    hung on SIGTERM). Here another thread holds the ready gauge's lock: the drain must not wait for it."""
    import threading

    from service.metrics import Metrics
    from service.state import ServiceState

    state = ServiceState(settings=Settings(_env_file=None), metrics=Metrics())  # type: ignore[call-arg]
    lock = getattr(getattr(state.metrics.ready, "_value", None), "_lock", None)
    if lock is None:
        pytest.skip("prometheus_client keeps its value lock elsewhere: update this test")
    with lock:
        drain = threading.Thread(target=state.start_drain, daemon=True)
        drain.start()
        drain.join(10)
        assert not drain.is_alive(), "start_drain waited for a metric's lock"
    assert state.draining and not state.ready
