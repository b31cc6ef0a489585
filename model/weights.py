"""Weights I/O: the project's safetensors files and the paper authors' ``.pth`` checkpoints.

Every loader ends in ``load_state_dict(strict=True)`` and every error names the
file and says what is wrong, because a half-loaded SR network still runs and
silently produces blurry output.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from model.imdn import IMDN, IMDN_AS, MODEL_NAMES, build_model
from model.plan import CAMERA_NAME, CAMERA_PREFIX, network_of

log = logging.getLogger(__name__)

# Where the project's own trained weights live, one file per model name.
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The authors' file names in their release, by model name.
OFFICIAL_FILENAMES = {"x2": "IMDN_x2.pth", "x3": "IMDN_x3.pth", "x4": "IMDN_x4.pth", "as": "IMDN_AS.pth"}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable, or does not fit the model."""


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel ('module.') and torch.compile ('_orig_mod.') key prefixes."""
    cleaned = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors or .pth file without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path}: not a checkpoint: expected a dict of tensors, found {type(loaded).__name__}")
    return dict(loaded)


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strictly load state_dict into model, explaining any mismatch in terms of the file."""
    state_dict = strip_prefixes(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        problems = []
        if "upsampler.0.weight" in wrong_shape:
            channels = state_dict["upsampler.0.weight"].shape[0]
            problems.append(f"wrong scale: its upsampler makes {channels} channels, this model needs "
                            f"{expected['upsampler.0.weight'].shape[0]}")
        if missing:
            problems.append(f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        if wrong_shape and "upsampler.0.weight" not in wrong_shape:
            problems.append(f"wrong shapes for {wrong_shape[:4]}")
        raise WeightsError(f"{source}: does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's string metadata ({} for .pth checkpoints, which have none)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), "pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc


def load_model(name: str, path: Path) -> IMDN | IMDN_AS:
    """Build model `name` ('x2'|'x3'|'x4'|'as', or a camera's 'as:NAME') and load weights from `path`, in eval
    mode."""
    model = build_model(network_of(name))
    load_into(model, read_state_dict(path), path)
    if isinstance(model, IMDN_AS):
        # Only weights that say so were trained with the input skip; the authors' were not.
        model.input_skip = read_metadata(path).get("input_skip") == "true"
    return model.eval()


def init_from(model: torch.nn.Module, path: Path) -> None:
    """Copy every tensor whose name and shape match (e.g. the x2 body into x4 or AS)."""
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: --init takes the project's own .safetensors weights")
    source = read_state_dict(path)
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    log.info("initialised %d/%d tensors from %s", len(matched), len(own), path)




def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save the weights as float32 safetensors (no pickle, ~3 MB per model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in strip_prefixes(model.state_dict()).items()}
    metadata = dict(metadata or {})
    if isinstance(model, IMDN_AS):
        metadata["input_skip"] = "true" if model.input_skip else "false"
    save_file(tensors, str(path), metadata=metadata)


def camera_weights(specs: list[str]) -> dict[str, Path]:
    """Calibrated IMDN_AS weights (imdn-sr calibrate) -> {"as:NAME": file}: each spec is a NAME.safetensors
    file, or a folder of them. Names are lower-case letters, digits, '-' and '_' (up to 32)."""
    files: dict[str, Path] = {}
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(path.glob("*.safetensors"))
            if not found:
                raise WeightsError(f"{path}: no .safetensors files in this camera folder")
        elif path.suffix == ".safetensors":
            found = [path]
        else:
            raise WeightsError(f"{path}: not a .safetensors file or a folder of them")
        for file in found:
            if not CAMERA_NAME.fullmatch(file.stem):
                raise WeightsError(f"{file}: a camera's file name must be 1-32 of a-z 0-9 - _ (it names the "
                                   f"model as:NAME), got {file.stem!r}")
            name = CAMERA_PREFIX + file.stem
            if name in files:
                raise WeightsError(f"{file}: camera {file.stem!r} is also {files[name]}")
            files[name] = file
    return files


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_weights(spec: str, name: str) -> Path:
    """Weights spec -> file for model `name`.

    'default' = the project's own ``model/weights/imdn_<name>.safetensors``;
    'official:DIR' = the authors' checkpoint in DIR; any other value is a folder
    holding ``imdn_<name>.safetensors``.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}")
    if spec == "default":
        return DEFAULT_WEIGHTS_DIR / f"imdn_{name}.safetensors"
    if spec.startswith("official:"):
        return Path(spec.removeprefix("official:")) / OFFICIAL_FILENAMES[name]
    return Path(spec) / f"imdn_{name}.safetensors"
