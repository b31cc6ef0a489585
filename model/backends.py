"""Inference backends: PyTorch (CPU or CUDA) and ONNX Runtime (CPU), behind one call signature.

A backend is a Runner: ``runner(model_name, batch)`` with batch (N,3,h,w) float32 on
the CPU in [0,1], returning (N,3,s*h,s*w) float32 on the CPU.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from model.imdn import IMDN, IMDN_AS, PART_STORAGE, NetworkPart
from model.weights import load_model, resolve_weights

log = logging.getLogger(__name__)

# onnxruntime's ArenaExtendStrategy values
SAME_AS_REQUESTED = 1
# How ONNX Runtime's arena says it has reached its limit (bfc_arena.cc).
ARENA_FULL = "BFCArena::AllocateRawInternal"


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> the first CUDA GPU if there is one, else the CPU; otherwise torch.device(name)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def load_models(names: list[str], weights: str = "default") -> dict[str, IMDN | IMDN_AS]:
    """Load each model's weights ('default', 'official:DIR' or a folder) in eval mode on the CPU."""
    return {name: load_model(name, resolve_weights(weights, name)) for name in names}


class TorchRunner:
    """PyTorch inference: channels_last, inference_mode; fp16 on CUDA (bf16 if asked)."""

    def __init__(self, models: dict[str, IMDN | IMDN_AS], device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed tile shapes: let cuDNN pick its fastest kernels
        self.models: dict[str, IMDN | IMDN_AS] = {}
        for name, model in models.items():
            model.to(self.device, self.dtype).eval()
            self.models[name] = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @torch.inference_mode()
    def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        x = batch.to(self.device, self.dtype, memory_format=torch.channels_last, non_blocking=True)
        stats = None if cca_contrast is None else cca_contrast.to(self.device)
        out = self.models[name](x, stats)
        return out.float().cpu().contiguous()

    @torch.inference_mode()
    def cca_moments(self, name: str, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        x = windows.to(self.device, self.dtype, memory_format=torch.channels_last)
        stats = None if cca_contrast is None else cca_contrast.to(self.device)
        return self.models[name].cca_moments(x, mask.to(self.device), stats).cpu()

    @torch.inference_mode()
    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        part = NetworkPart(self.models[name], kind, block)  # type: ignore[arg-type]
        return tuple(t.cpu() for t in part(*(t.to(self.device) for t in inputs)))

    def release_memory(self) -> None:
        """Nothing to hand back: PyTorch frees CPU tensors as they die (and caches CUDA blocks on purpose)."""


class EagerRunner:
    """Plain fp32 eager PyTorch, NCHW: the paper authors' way; the baseline benchmarks compare against."""

    def __init__(self, models: dict[str, IMDN | IMDN_AS]) -> None:
        self.models = {name: m.float().eval() for name, m in models.items()}

    @torch.inference_mode()
    def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        return self.models[name](batch.contiguous(), cca_contrast)

    @torch.inference_mode()
    def cca_moments(self, name: str, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        return self.models[name].cca_moments(windows, mask, cca_contrast)

    @torch.inference_mode()
    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return NetworkPart(self.models[name], kind, block)(*inputs)  # type: ignore[arg-type]


class _WithStatistics(nn.Module):
    """Exports the network with whole-image CCA statistics as a second input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, cca_contrast: torch.Tensor) -> torch.Tensor:
        return self.model(x, cca_contrast)


class _Moments(nn.Module):
    """Exports the network's CCA-moments pass (IMDN.cca_moments), with or without given statistics."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor, mask: torch.Tensor,
                cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.cca_moments(windows, mask, cca_contrast)  # type: ignore[operator]


def export_onnx(model: nn.Module, with_statistics: bool = False, path: Path | None = None) -> bytes:
    """Export with dynamic batch/height/width (opset 17). Returns the ONNX bytes (also written to path)."""
    model = model.float().eval()
    example: tuple[torch.Tensor, ...] = (torch.rand(1, 3, 32, 32),)
    names, axes = ["lr"], {"lr": {0: "n", 2: "h", 3: "w"}, "sr": {0: "n", 2: "sh", 3: "sw"}}
    if with_statistics:
        model = _WithStatistics(model)
        example += (torch.rand(1, 6, 64),)
        names.append("cca_contrast")
        axes["cca_contrast"] = {0: "n"}
    return _export(model, example, names, "sr", axes, path)


def export_moments_onnx(model: nn.Module, with_statistics: bool = False) -> bytes:
    """The CCA-moments pass (windows, mask[, statistics] -> (6,3,64) float64 moments) as ONNX bytes."""
    side = 32 // (4 if isinstance(model, IMDN_AS) else 1)  # the mask is at feature resolution
    example: tuple[torch.Tensor, ...] = (torch.rand(1, 3, 32, 32), torch.ones(1, 1, side, side, dtype=torch.bool))
    names = ["windows", "mask"]
    axes = {"windows": {0: "n", 2: "h", 3: "w"}, "mask": {0: "n", 2: "mh", 3: "mw"}}
    if with_statistics:
        example += (torch.rand(6, 64),)
        names.append("cca_contrast")
    return _export(_Moments(model.float().eval()), example, names, "moments", axes)


def export_part_onnx(model: IMDN_AS, kind: str, block: int = 0) -> bytes:
    """One NetworkPart as ONNX bytes: inputs i0, i1, ..., outputs o0, o1, ...; dynamic batch, height, width."""
    maps, image = torch.zeros(1, 64, 4, 4, dtype=PART_STORAGE), torch.rand(1, 3, 16, 16)
    own = torch.tensor([1, 3, 0, 4])  # the window's own rows and columns
    finish = (maps, maps, torch.rand(1, 64), maps)  # the block before: distilled, input, statistics, collected
    examples = {"head": (image,), "tail": (*finish, image), "tail_held": (*finish, maps, image)}
    example: tuple[torch.Tensor, ...] = examples.get(kind, (maps, own) if block == 0 else (*finish, own))
    part = NetworkPart(model.float().eval(), kind, block)
    results = part(*example)
    names, outputs = [f"i{i}" for i in range(len(example))], [f"o{i}" for i in range(len(results))]
    dynamic = {4: {0: "n", 2: "h", 3: "w"}, 2: {0: "n"}}  # feature maps and images; statistics (N,64)
    axes = {name: dynamic[t.dim()] for name, t in zip(names, example, strict=True) if t.dim() in dynamic}
    axes.update({name: {0: "n", 2: "oh", 3: "ow"} for name, t in zip(outputs, results, strict=True) if t.dim() == 4})
    return _export(part, example, names, outputs, axes)


def _export(model: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], output: str | list[str],
            axes: dict[str, dict[int, str]], path: Path | None = None) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (fast, no onnxscript tracing); its deprecation
        # notices would otherwise print on every start-up.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, buffer, input_names=names,  # type: ignore[arg-type]
                          output_names=[output] if isinstance(output, str) else output, opset_version=17,
                          dynamic_axes=axes, dynamo=False)
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


class OnnxRunner:
    """ONNX Runtime on the CPU, exported from the same weights at start-up (two graphs per model:
    with and without whole-image statistics). The statistics passes of tiled images and IMDN_AS's parts
    get their own graphs on first use (statistics, measured: 1.4-2x less CPU time than eager PyTorch for
    4 windows of 168 px)."""

    def __init__(self, models: dict[str, IMDN | IMDN_AS], threads: int | None = None,
                 arena_limit_bytes: int = 0) -> None:
        """arena_limit_bytes: a cap on the process's shared arena (0: none), set by the first runner made."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Every session allocates from one shared arena, so a run reuses the buffers of the runs before
        # it. Without it, each activation of a large tile was a fresh mmap whose pages the kernel had to
        # fault in and zero on every run: measured 2-3x slower per pixel for IMDN windows past ~360 px
        # and IMDN_AS past ~1400 px, and a higher peak RSS. release_memory() hands it back when idle;
        # a full arena (buffers of many tile shapes under steady load) is handed back and the run retried.
        options.enable_cpu_mem_arena = True
        options.add_session_config_entry("session.use_env_allocators", "1")
        # Memory patterns pre-plan one block per input shape; with them a run that finds the arena full
        # still failed after it was handed back (measured), and they gave no measurable speed here.
        options.enable_mem_pattern = False
        options.log_severity_level = 4  # failures surface as exceptions; a full arena is not worth a log line
        _register_shared_arena(arena_limit_bytes)
        # Idle pool threads sleep instead of spinning: the spin would take the cores from the PNG encoder
        # and the other requests' threads working beside a run (and from neighbours on a shared host).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.options = options
        self.sessions = {
            (name, stats): ort.InferenceSession(export_onnx(model, stats), options, providers=["CPUExecutionProvider"])
            for name, model in models.items()
            for stats in (False, True)
        }
        self.models = models
        self.later_sessions: dict[tuple[object, ...], object] = {}  # statistics and part graphs, made on first use
        # A session is thread-safe, but two concurrent runs just fight over the same cores.
        self.lock = threading.Lock()

    def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {"lr": batch.contiguous().numpy()}
        if cca_contrast is not None:
            feeds["cca_contrast"] = cca_contrast.float().contiguous().numpy()
        with self.lock:
            out = self._run(self.sessions[(name, cca_contrast is not None)], feeds)[0]
        return torch.from_numpy(out)

    def cca_moments(self, name: str, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        if not mask.any():
            raise ValueError("the mask selects no pixel")
        given = cca_contrast is not None
        feeds = {"windows": windows.float().contiguous().numpy(), "mask": mask.contiguous().numpy()}
        if cca_contrast is not None:
            feeds["cca_contrast"] = cca_contrast.float().contiguous().numpy()
        with self.lock:
            session = self._later_session(("moments", name, given),
                                          lambda: export_moments_onnx(self.models[name], given))
            out = self._run(session, feeds)[0]
        return torch.from_numpy(out)

    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {f"i{i}": t.contiguous().numpy() for i, t in enumerate(inputs)}
        with self.lock:
            session = self._later_session(("part", name, kind, block),
                                          lambda: export_part_onnx(self.models[name], kind, block))  # type: ignore[arg-type]
            outputs = self._run(session, feeds)
        return tuple(torch.from_numpy(out) for out in outputs)

    def _later_session(self, key: tuple[object, ...], export: Callable[[], bytes]) -> Any:
        """The session for `key` (the lock held), made from export()'s graph on first use."""
        import onnxruntime as ort

        if key not in self.later_sessions:
            self.later_sessions[key] = ort.InferenceSession(export(), self.options, providers=["CPUExecutionProvider"])
        return self.later_sessions[key]

    def _run(self, session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One run (the lock held), all its outputs; if the arena is full, hand its free buffers back and
        try once more."""
        try:
            return session.run(None, feeds)
        except Exception as exc:
            if ARENA_FULL not in str(exc):
                raise
        self._shrink()
        try:
            return session.run(None, feeds)
        except Exception as exc:
            if ARENA_FULL not in str(exc):
                raise
            # The engine's out-of-memory handling redoes the work in smaller tiles.
            raise MemoryError(f"ONNX Runtime's arena limit is too small for this run: {exc}") from None

    def release_memory(self) -> None:
        """Return the shared arena's free buffers to the system (a tiny run that shrinks it on the way out)."""
        with self.lock:
            self._shrink()

    def _shrink(self) -> None:
        import onnxruntime as ort

        shrink = ort.RunOptions()
        shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        name = next(iter(self.models))
        self.sessions[(name, False)].run(None, {"lr": np.zeros((1, 3, 8, 8), np.float32)}, shrink)


_arena_lock = threading.Lock()
_arena_registered = False


def _register_shared_arena(limit_bytes: int) -> None:
    """One CPU arena for every ONNX Runtime session of the process, growing by what is asked (not doubling)."""
    global _arena_registered
    import onnxruntime as ort

    with _arena_lock:
        if _arena_registered:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # max_mem (0: no cap), extend by the request, default initial chunk and dead-bytes limit.
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(limit_bytes, SAME_AS_REQUESTED, -1, -1))
        _arena_registered = True


Backend = Literal["auto", "torch", "onnx"]
BACKENDS: tuple[str, ...] = get_args(Backend)


def uses_onnx(device: torch.device, backend: str = "auto") -> bool:
    """The one choice of backend: ONNX Runtime on a CPU when asked for, or by default ("auto") where it is
    installed (faster there: bench/backends.py); PyTorch everywhere else."""
    return device.type == "cpu" and (backend == "onnx" or (backend == "auto" and onnx_available()))


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
