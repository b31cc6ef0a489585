"""Weights I/O: safetensors round trip, wrapper prefixes, authors' checkpoints, and errors that name the file."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file

from model.imdn import IMDN, IMDN_AS, MODEL_NAMES, build_model, imdn_x2
from model.weights import (
    DEFAULT_WEIGHTS_DIR,
    OFFICIAL_FILENAMES,
    WeightsError,
    load_into,
    load_model,
    read_state_dict,
    resolve_weights,
    save_weights,
    strip_prefixes,
)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_weights_load_model_round_trip(tmp_path, name):
    torch.manual_seed(4)
    model = build_model(name)
    path = tmp_path / "nested" / f"imdn_{name}.safetensors"
    save_weights(model, path, {"model": name})
    loaded = load_model(name, path)
    _assert_same_weights(model, loaded)
    assert not loaded.training
    assert all(v.dtype == torch.float32 for v in load_file(str(path)).values())


@pytest.mark.parametrize("input_skip", [True, False])
def test_as_input_skip_travels_in_the_metadata(tmp_path, input_skip):
    model = build_model("as")
    assert isinstance(model, IMDN_AS)
    model.input_skip = input_skip
    path = tmp_path / "imdn_as.safetensors"
    save_weights(model, path)
    loaded = load_model("as", path)
    assert isinstance(loaded, IMDN_AS) and loaded.input_skip is input_skip


def test_as_checkpoint_without_metadata_is_the_papers_network(tmp_path):
    path = tmp_path / "IMDN_AS.pth"  # the authors' format: no metadata, no skip
    torch.save(build_model("as").state_dict(), path)
    loaded = load_model("as", path)
    assert isinstance(loaded, IMDN_AS) and not loaded.input_skip


def test_save_weights_strips_compile_and_dataparallel_wrappers(tmp_path):
    torch.manual_seed(5)
    model = imdn_x2()
    wrapped = torch.nn.DataParallel(model)
    path = tmp_path / "w.safetensors"
    save_weights(wrapped, path)
    assert all(not k.startswith("module.") for k in load_file(str(path)))
    _assert_same_weights(model, load_model("x2", path))


def test_strip_prefixes_removes_nested_wrappers():
    t = torch.zeros(1)
    cleaned = strip_prefixes({"module.a.weight": t, "_orig_mod.b": t, "module._orig_mod.module.c": t, "d.module.e": t})
    assert list(cleaned) == ["a.weight", "b", "c", "d.module.e"]


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_load_model_prefixed_pth(tmp_path, prefix):
    torch.manual_seed(6)
    model = imdn_x2()
    path = tmp_path / "prefixed.pth"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    _assert_same_weights(model, load_model("x2", path))


def test_read_state_dict_unwraps_training_checkpoint(tmp_path):
    model = imdn_x2()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    assert read_state_dict(path).keys() == model.state_dict().keys()


def test_read_state_dict_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(WeightsError, match="nowhere.safetensors: weights file not found"):
        read_state_dict(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".pt"])
def test_read_state_dict_garbage_bytes(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\x00\x01 definitely not weights \xff" * 16)
    with pytest.raises(WeightsError, match=f"garbage{suffix}: not a readable checkpoint"):
        read_state_dict(path)


def test_read_state_dict_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.pth"):
        read_state_dict(path)


def test_read_state_dict_torch_saved_non_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2), torch.ones(2)], path)
    with pytest.raises(WeightsError, match="list.pth: not a checkpoint: expected a dict of tensors, found list"):
        read_state_dict(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
@pytest.mark.parametrize("obj", [[1, 2, 3], "hello", None])
def test_read_state_dict_plain_pickle_of_non_dict(tmp_path, obj, protocol):
    path = tmp_path / "pickled.pth"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(WeightsError, match="pickled.pth"):
        read_state_dict(path)


def test_read_state_dict_dict_with_non_tensors(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"a": torch.zeros(1), "b": 3}, path)
    with pytest.raises(WeightsError, match="mixed.pth: not a checkpoint"):
        read_state_dict(path)


def test_read_state_dict_refuses_to_unpickle_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        torch.save({"w": Evil()}, f)
    with pytest.raises(WeightsError, match="evil.pth"):
        read_state_dict(path)


@pytest.mark.parametrize(("source", "target"), [("x2", "x4"), ("x4", "x3")])
def test_load_model_wrong_scale(tmp_path, source, target):
    path = tmp_path / f"imdn_{source}.safetensors"
    save_weights(build_model(source), path)
    with pytest.raises(WeightsError, match="scale") as info:
        load_model(target, path)
    assert str(path) in str(info.value)


def test_load_model_as_weights_into_x2(tmp_path):
    path = tmp_path / "imdn_as.safetensors"
    save_weights(build_model("as"), path)
    with pytest.raises(WeightsError, match="imdn_as.safetensors: does not fit IMDN"):
        load_model("x2", path)


def test_load_model_missing_keys(tmp_path):
    state = imdn_x2().state_dict()
    del state["IMDB3.c5.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"partial.pth: .*missing keys \['IMDB3.c5.weight'\]"):
        load_model("x2", path)


def test_load_into_unexpected_keys_and_shapes():
    model = imdn_x2()
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"src.pth: .*unexpected keys \['extra.weight'\]"):
        load_into(model, state, "src.pth")
    state = dict(model.state_dict())
    state["LR_conv.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(WeightsError, match="wrong shapes for .*LR_conv.weight"):
        load_into(model, state, "src.pth")


def test_load_into_failure_leaves_model_untouched():
    torch.manual_seed(7)
    model = imdn_x2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    del state["fea_conv.bias"]
    with pytest.raises(WeightsError):
        load_into(model, state, "x")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resolve_weights_specs(tmp_path):
    assert resolve_weights("default", "x3") == DEFAULT_WEIGHTS_DIR / "imdn_x3.safetensors"
    assert resolve_weights(f"official:{tmp_path}", "as") == tmp_path / "IMDN_AS.pth"
    assert resolve_weights(str(tmp_path), "x2") == tmp_path / "imdn_x2.safetensors"
    with pytest.raises(ValueError, match="unknown model"):
        resolve_weights("default", "x8")


@pytest.mark.shared
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_load_model_official_checkpoints_strict(official_dir, name):
    path = resolve_weights(f"official:{official_dir}", name)
    assert path.name == OFFICIAL_FILENAMES[name]
    model = load_model(name, path)  # load_into ends in load_state_dict(strict=True)
    assert isinstance(model, IMDN_AS if name == "as" else IMDN)
    assert not getattr(model, "input_skip", False)
    expected = strip_prefixes(read_state_dict(path))
    assert expected.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key].float()), key


def test_camera_weights_from_files_and_folders(tmp_path):
    from model.weights import camera_weights

    folder = tmp_path / "cams"
    folder.mkdir()
    for name in ("phone", "scope_2"):
        (folder / f"{name}.safetensors").write_bytes(b"")
    single = tmp_path / "dslr.safetensors"
    single.write_bytes(b"")
    assert camera_weights([str(folder), str(single)]) == {
        "as:phone": folder / "phone.safetensors", "as:scope_2": folder / "scope_2.safetensors", "as:dslr": single}
    assert camera_weights([]) == {}


@pytest.mark.parametrize(("name", "message"), [("My Camera.safetensors", "file name must be"),
                                               ("cam.pth", "not a .safetensors file"),
                                               ("empty", "no .safetensors files")])
def test_camera_weights_refuse_what_cannot_be_a_model_name(tmp_path, name, message):
    from model.weights import WeightsError, camera_weights

    path = tmp_path / name
    path.mkdir() if name == "empty" else path.write_bytes(b"")
    with pytest.raises(WeightsError, match=message):
        camera_weights([str(path)])


def test_camera_weights_refuse_one_name_twice(tmp_path):
    from model.weights import WeightsError, camera_weights

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "cam.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="is also"):
        camera_weights([str(tmp_path / "a"), str(tmp_path / "b")])


def test_a_camera_loads_as_imdn_as(tmp_path):
    from model.imdn import IMDN_AS, build_model
    from model.weights import load_model, save_weights

    path = tmp_path / "cam.safetensors"
    save_weights(build_model("as"), path)
    assert isinstance(load_model("as:cam", path), IMDN_AS)
