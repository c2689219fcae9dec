"""Checkpoint loading and saving (ADM protocol §6): round trips, bare guided-diffusion state
dicts with flags/presets, and mismatch errors that name the differing flag."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from evalsuite.models import (
    ClassifierConfig,
    DiffusionConfig,
    UNetConfig,
    build_configs,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from evalsuite.runtime.errors import EvalsuiteError

# A tiny UNet and the guided-diffusion flags that describe it.
FLAGS = {
    "image_size": "16",
    "num_channels": "32",
    "num_res_blocks": "1",
    "channel_mult": "1,2",
    "attention_resolutions": "8",
    "num_head_channels": "16",
    "class_cond": "True",
    "num_classes": "10",
    "learn_sigma": "True",
    "resblock_updown": "True",
    "noise_schedule": "cosine",
}
CLASSIFIER_FLAGS = {
    "image_size": "16",
    "classifier_width": "32",
    "classifier_depth": "1",
    "classifier_attention_resolutions": "8",
    "num_classes": "10",
}


def _flags(base: dict[str, str] = FLAGS, **changes: str) -> str:
    return " ".join(f"--{name} {value}" for name, value in {**base, **changes}.items())


@pytest.fixture(autouse=True)
def _seeded_init():
    # Module initialisation draws from the global RNG: seed it per test and restore it after.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def _randomise(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return model


def _tiny_unet(flags: str = _flags()) -> tuple[torch.nn.Module, UNetConfig, DiffusionConfig]:
    config, diffusion = build_configs(flags, kind="unet")
    return _randomise(build_model(config)).eval(), config, diffusion


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([3, 900]), torch.tensor([1, 8]))


def _bare(tmp_path: Path, model: torch.nn.Module, name: str = "bare.pt") -> Path:
    # guided-diffusion saves `model.state_dict()` as is.
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def test_save_load_round_trip(tmp_path: Path):
    model, config, diffusion = _tiny_unet()
    path = save_checkpoint(
        tmp_path / "model.pt", model, config, diffusion, kind="unet", step=1200, extra={"run": "a"}
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind
    loaded = load_checkpoint(path, "unet")
    assert loaded.source == "embedded" and loaded.weights == "state_dict"
    assert loaded.model_config == config and loaded.diffusion_config == diffusion
    assert loaded.step == 1200 and loaded.extra == {"run": "a"}
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == path and not loaded.model.training
    torch.testing.assert_close(_outputs(loaded.model), _outputs(model), rtol=0, atol=0)
    # Overwriting an existing checkpoint is atomic and leaves one file.
    save_checkpoint(path, model, config, diffusion, kind="unet")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_ema_weights_are_preferred(tmp_path: Path):
    model, config, diffusion = _tiny_unet()
    ema = _randomise(build_model(config), scale=0.2).eval()
    path = save_checkpoint(
        tmp_path / "m.pt", model, config, diffusion, kind="unet", ema_state_dict=ema.state_dict()
    )
    loaded = load_checkpoint(path, "unet")
    assert loaded.weights == "ema_state_dict"
    torch.testing.assert_close(_outputs(loaded.model), _outputs(ema), rtol=0, atol=0)
    assert not torch.equal(_outputs(loaded.model), _outputs(model))


def test_embedded_config_must_agree_with_given_flags(tmp_path: Path):
    model, config, diffusion = _tiny_unet()
    path = save_checkpoint(tmp_path / "m.pt", model, config, diffusion, kind="unet")
    # Agreeing flags (the sampling-time timestep_respacing is not compared).
    agreeing = load_checkpoint(path, "unet", flags=_flags(timestep_respacing="250"))
    assert agreeing.source == "embedded"
    with pytest.raises(EvalsuiteError, match="disagree.*num_res_blocks.*file: 1, given: 2"):
        load_checkpoint(path, "unet", flags=_flags(num_res_blocks="2"))
    with pytest.raises(EvalsuiteError, match="noise_schedule"):
        load_checkpoint(path, "unet", flags=_flags(noise_schedule="linear"))
    with pytest.raises(EvalsuiteError, match="holds a 'unet' model, but kind='classifier'"):
        load_checkpoint(path, "classifier")


def test_bare_state_dict_with_flags_loads(tmp_path: Path):
    model, config, diffusion = _tiny_unet()
    path = _bare(tmp_path, model)
    loaded = load_checkpoint(path, "unet", flags=_flags())
    assert loaded.source == "flags" and loaded.model_config == config
    assert loaded.diffusion_config.noise_schedule == "cosine"
    torch.testing.assert_close(_outputs(loaded.model), _outputs(model), rtol=0, atol=0)
    assert next(loaded.model.parameters()).device.type == "cpu"


def test_released_fp16_weights_load_as_float32(tmp_path: Path):
    model, _, _ = _tiny_unet()
    path = tmp_path / "half.pt"
    torch.save({key: value.half() for key, value in model.state_dict().items()}, path)
    loaded = load_checkpoint(path, "unet", flags=_flags())
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    torch.testing.assert_close(_outputs(loaded.model), _outputs(model), rtol=1e-2, atol=1e-2)


def test_classifier_round_trip_and_pool_mismatch(tmp_path: Path):
    config, diffusion = build_configs(_flags(CLASSIFIER_FLAGS), kind="classifier")
    assert isinstance(config, ClassifierConfig)
    model = _randomise(build_model(config)).eval()
    path = _bare(tmp_path, model)
    loaded = load_checkpoint(path, "classifier", flags=_flags(CLASSIFIER_FLAGS))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(x, torch.tensor([1, 2])), model(x, torch.tensor([1, 2]))
        )
    with pytest.raises(
        EvalsuiteError, match="classifier_pool \\(given adaptive, file has attention\\)"
    ):
        load_checkpoint(
            path, "classifier", flags=_flags(CLASSIFIER_FLAGS, classifier_pool="adaptive")
        )
    with pytest.raises(EvalsuiteError, match="classifier_width \\(given 64, file has 32\\)"):
        load_checkpoint(path, "classifier", flags=_flags(CLASSIFIER_FLAGS, classifier_width="64"))


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"num_channels": "64"}, "num_channels (given 64, file has 32)"),
        ({"learn_sigma": "False"}, "learn_sigma (given 3 output channels, file has 6"),
        ({"class_cond": "False"}, "class_cond (given False, file has True)"),
        ({"num_classes": "1000"}, "num_classes (given 1000, file has 10)"),
        ({"resblock_updown": "False"}, "resblock_updown"),
        ({"use_scale_shift_norm": "False"}, "use_scale_shift_norm"),
        ({"num_res_blocks": "2"}, "num_res_blocks (given 2, file has 1)"),
        ({"channel_mult": "1,2,2"}, "channel_mult"),
        ({"attention_resolutions": "16,8"}, "attention_resolutions (given 16,8, file has 8)"),
    ],
)
def test_mismatch_names_the_flag(tmp_path: Path, changes: dict[str, str], flag: str):
    model, _, _ = _tiny_unet()
    path = _bare(tmp_path, model)
    with pytest.raises(EvalsuiteError) as error:
        load_checkpoint(path, "unet", flags=_flags(**changes))
    message = str(error.value)
    assert "most likely differing flag(s): " + flag in message
    assert "\n" not in message
    # Flags that did not change are not blamed.
    for other in ("num_channels", "learn_sigma", "class_cond", "resblock_updown"):
        if not flag.startswith(other):
            assert f"{other} (" not in message


def test_classifier_image_size_mismatch_is_read_off_the_positional_embedding(tmp_path: Path):
    # Default channel_mult: 32 -> (1, 2, 2, 2), 64 -> (1, 2, 3, 4): same block count, final
    # feature map 4x4 vs 8x8 (positional embedding [C, 17] vs [C, 65]).
    config, _ = build_configs(_flags(CLASSIFIER_FLAGS, image_size="32"), kind="classifier")
    path = _bare(tmp_path, build_model(config))
    with pytest.raises(EvalsuiteError) as error:
        load_checkpoint(path, "classifier", flags=_flags(CLASSIFIER_FLAGS, image_size="64"))
    assert (
        "image_size (or channel_mult) (given final feature map 8x8, file has final feature map 4x4)"
        in str(error.value)
    )


def test_upsampler_state_dict_with_plain_unet_flags(tmp_path: Path):
    upsampler_flags = {**FLAGS, "large_size": "16", "small_size": "8"}
    del upsampler_flags["image_size"]
    model, _, _ = _tiny_unet(_flags(upsampler_flags))
    path = _bare(tmp_path, model)
    loaded = load_checkpoint(path, "unet", flags=_flags(upsampler_flags))
    assert loaded.model_config.is_upsampler and loaded.model_config.image_size == 16
    with pytest.raises(
        EvalsuiteError, match="upsampler\\) \\(given 3 input channels, file has 6 input channels\\)"
    ):
        load_checkpoint(path, "unet", flags=_flags())


def test_preset_on_a_different_state_dict_names_the_width(tmp_path: Path):
    model, _, _ = _tiny_unet()
    path = _bare(tmp_path, model)
    with pytest.raises(
        EvalsuiteError, match="preset '64x64_diffusion'.*num_channels \\(given 192, file has 32\\)"
    ):
        load_checkpoint(path, "unet", preset="64x64_diffusion")
    with pytest.raises(EvalsuiteError, match="describes a classifier"):
        load_checkpoint(path, "unet", preset="64x64_classifier")
    with pytest.raises(EvalsuiteError, match="unknown preset"):
        load_checkpoint(path, "unet", preset="64x64")


def test_bare_state_dict_needs_an_architecture(tmp_path: Path):
    model, _, _ = _tiny_unet()
    path = _bare(tmp_path, model)
    with pytest.raises(
        EvalsuiteError, match="bare state dict.*--model-flags.*--preset.*256x256_diffusion"
    ):
        load_checkpoint(path, "unet")
    with pytest.raises(EvalsuiteError, match="not both"):
        load_checkpoint(path, "unet", flags=_flags(), preset="64x64_diffusion")


def test_non_checkpoint_files_are_rejected(tmp_path: Path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(EvalsuiteError, match="not a guided-diffusion state dict"):
        load_checkpoint(text, "unet", flags=_flags())
    npz = tmp_path / "batch.npz"
    np.savez(npz, arr_0=np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(EvalsuiteError, match="NumPy .npz archive"):
        load_checkpoint(npz, "unet", flags=_flags())
    with pytest.raises(EvalsuiteError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", "unet", flags=_flags())
    other = tmp_path / "other.pt"
    torch.save({"model": 3, "optimizer": [1, 2]}, other)
    with pytest.raises(EvalsuiteError, match="neither a state dict.*model, optimizer"):
        load_checkpoint(other, "unet", flags=_flags())
    model, _, _ = _tiny_unet()
    with pytest.raises(EvalsuiteError, match="unknown model kind 'vae'"):
        load_checkpoint(_bare(tmp_path, model), "vae", flags=_flags())


def test_newer_checkpoint_version_is_rejected(tmp_path: Path):
    model, config, diffusion = _tiny_unet()
    path = save_checkpoint(tmp_path / "m.pt", model, config, diffusion, kind="unet")
    payload = torch.load(path, weights_only=True)
    payload["version"] = 2
    torch.save(payload, path)
    with pytest.raises(EvalsuiteError, match="version 2"):
        load_checkpoint(path, "unet")


def test_save_checkpoint_validates_its_inputs(tmp_path: Path):
    model, config, diffusion = _tiny_unet()
    with pytest.raises(EvalsuiteError, match="JSON"):
        save_checkpoint(
            tmp_path / "m.pt", model, config, diffusion, kind="unet", extra={"t": torch.ones(1)}
        )
    with pytest.raises(EvalsuiteError, match="needs a ClassifierConfig"):
        save_checkpoint(tmp_path / "m.pt", model, config, diffusion, kind="classifier")
    assert list(tmp_path.iterdir()) == []


def test_norm_groups_round_trip(tmp_path: Path):
    model, config, diffusion = _tiny_unet(_flags(norm_groups="8"))
    assert config.norm_groups == 8
    path = save_checkpoint(tmp_path / "m.pt", model, config, diffusion, kind="unet")
    loaded = load_checkpoint(path, "unet")
    assert loaded.model_config.norm_groups == 8
    torch.testing.assert_close(_outputs(loaded.model), _outputs(model), rtol=0, atol=0)
    # The group count changes the function, not the shapes: a caller's flags must agree with it.
    with pytest.raises(EvalsuiteError, match="norm_groups"):
        load_checkpoint(path, "unet", flags=_flags())
    bare = load_checkpoint(_bare(tmp_path, model), "unet", flags=_flags(norm_groups="8"))
    torch.testing.assert_close(_outputs(bare.model), _outputs(model), rtol=0, atol=0)
