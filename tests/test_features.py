"""InceptionFeatureExtractor against torch-fidelity's own extractor (ADM protocol §1).

The reference is torch-fidelity's FeatureExtractorInceptionV3 loaded from a file with the same
weights (features '2048' and 'logits_unbiased'); the spatial reference is an independent forward
hook on its Mixed_6d.branch1x1. Weights: the offline fid-helper trunk plus a seeded random
classifier head made up by the test (so the logits path is checked too).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from evalsuite.features import (
    InceptionFeatureExtractor,
    InceptionWeights,
    extract_features,
    resolve_inception_weights,
    to_nchw_uint8,
)
from evalsuite.features import inception as inception_module
from evalsuite.features import weights as weights_module
from evalsuite.features.inception import fp32_precision, tf1_resize
from evalsuite.runtime.errors import EvalsuiteError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(weights_module.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(weights_module, "STANDARD_WEIGHT_FILES", ())


@pytest.fixture(scope="module")
def trunk_weights(tmp_path_factory) -> InceptionWeights:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALSUITE_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv(weights_module.WEIGHTS_ENV, raising=False)
        mp.setattr(weights_module, "STANDARD_WEIGHT_FILES", ())
        return resolve_inception_weights()


@pytest.fixture(scope="module")
def full_weights(trunk_weights) -> InceptionWeights:
    generator = torch.Generator().manual_seed(2)
    head = {
        "fc.weight": torch.randn(1008, 2048, generator=generator) * 0.05,
        "fc.bias": torch.randn(1008, generator=generator),
    }
    return InceptionWeights(
        state_dict={**trunk_weights.state_dict, **head},
        source="test",
        path="",
        sha256="",
        has_logits=True,
    )


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "small": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator),
        "larger": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=generator),
    }


@pytest.fixture(scope="module")
def extractor(full_weights) -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(full_weights)


@pytest.fixture(scope="module")
def ours(extractor, images) -> dict[str, dict[str, torch.Tensor]]:
    return {name: extractor(batch) for name, batch in images.items()}


@pytest.fixture(scope="module")
def reference(full_weights, images, tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """torch-fidelity's own extractor on the same weights, plus a hook on Mixed_6d.branch1x1."""
    path = tmp_path_factory.mktemp("tf_weights") / "weights.pth"
    torch.save(dict(full_weights.state_dict), path)
    network = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
    )
    captured = {}
    hook = network.Mixed_6d.branch1x1.register_forward_hook(
        lambda module, args, output: captured.__setitem__("mixed_6_conv", output.clone())
    )
    results = {}
    with torch.inference_mode():
        for name, batch in images.items():
            pool, logits = network(batch)
            results[name] = {
                "pool": pool,
                "logits": logits,
                "mixed_6_conv": captured.pop("mixed_6_conv"),
            }
    hook.remove()
    return results


@pytest.mark.parametrize("size", ["small", "larger"])
def test_pool_and_logits_match_torch_fidelity(ours, reference, size):
    assert ours[size]["pool"].dtype == torch.float32
    assert (
        ours[size]["pool"].shape == reference[size]["pool"].shape == (len(ours[size]["pool"]), 2048)
    )
    torch.testing.assert_close(ours[size]["pool"], reference[size]["pool"], rtol=0, atol=1e-4)
    assert ours[size]["logits"].shape == (len(ours[size]["pool"]), 1008)
    torch.testing.assert_close(ours[size]["logits"], reference[size]["logits"], rtol=0, atol=1e-4)


def test_logits_have_no_bias(ours, full_weights):
    """§1: logits = pool_3 @ W, no bias (the made-up bias here is large, so it would show)."""
    weight = full_weights.state_dict["fc.weight"]
    expected = ours["small"]["pool"].double() @ weight.double().T
    torch.testing.assert_close(ours["small"]["logits"].double(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", ["small", "larger"])
def test_spatial_is_mixed6_conv_in_hwc_order(ours, reference, size):
    conv = reference[size]["mixed_6_conv"]
    batch = conv.shape[0]
    assert conv.shape == (batch, 192, 17, 17)
    assert conv.min() >= 0  # post-ReLU
    spatial = ours[size]["spatial"]
    assert spatial.shape == (batch, 2023) and spatial.dtype == torch.float32
    expected = conv[:, :7].permute(0, 2, 3, 1).reshape(batch, -1)
    torch.testing.assert_close(spatial, expected, rtol=0, atol=1e-4)
    # §1: index (h*17 + w)*7 + c holds channel c at row h, column w.
    for h, w, c in [(5, 11, 3), (0, 16, 6), (16, 0, 0)]:
        torch.testing.assert_close(
            spatial[:, (h * 17 + w) * 7 + c], conv[:, c, h, w], rtol=0, atol=1e-4
        )
    assert not torch.allclose(spatial, conv[:, :7].reshape(batch, -1), atol=1e-3)


@pytest.mark.parametrize(
    "shape", [(2, 3, 16, 16), (1, 3, 64, 64), (1, 3, 37, 80), (1, 3, 512, 333), (1, 3, 299, 299)]
)
def test_tf1_resize_is_bit_identical_to_torch_fidelity(shape):
    """Up, down, non-square and identity resizes equal torch-fidelity's TF1 resize exactly."""
    generator = torch.Generator().manual_seed(sum(shape))
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    ours = tf1_resize(images, 299)
    assert ours.shape == (shape[0], 299, 299, 3) and ours.dtype == torch.float32
    theirs = interpolate_bilinear_2d_like_tensorflow1x(
        images.float(), size=(299, 299), align_corners=False
    )
    assert torch.equal(ours.permute(0, 3, 1, 2), theirs)


def test_portable_path_matches_fused_path(full_weights, ours, reference, images, monkeypatch):
    """Without oneDNN's fused kernels (CUDA, other builds) the plain conv2d+relu path agrees."""
    monkeypatch.setattr(inception_module, "_ONEDNN_FUSED", False)
    portable = InceptionFeatureExtractor(full_weights)(images["small"])
    for name in ("pool", "spatial", "logits"):
        torch.testing.assert_close(portable[name], ours["small"][name], rtol=0, atol=1e-5)
    torch.testing.assert_close(portable["pool"], reference["small"]["pool"], rtol=0, atol=1e-4)


def test_nhwc_and_nchw_inputs_agree(extractor, ours, images):
    nhwc_array = images["small"].permute(0, 2, 3, 1).numpy().copy()
    from_array = extractor(nhwc_array)
    for name in ("pool", "spatial", "logits"):
        assert torch.equal(from_array[name], ours["small"][name])


def test_to_nchw_uint8_accepts_both_layouts():
    nhwc = np.arange(2 * 5 * 7 * 3, dtype=np.uint8).reshape(2, 5, 7, 3)
    converted = to_nchw_uint8(nhwc)
    assert converted.shape == (2, 3, 5, 7) and converted.dtype == torch.uint8
    assert converted[1, 2, 4, 6] == nhwc[1, 4, 6, 2]
    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(to_nchw_uint8(nchw), converted)
    assert torch.equal(to_nchw_uint8(torch.from_numpy(nhwc)), converted)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), r"shape \(2, 8, 8, 3\) and dtype float32"),
        (torch.zeros(2, 3, 8, 8), r"shape \(2, 3, 8, 8\) and dtype torch.float32"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"shape \(2, 8, 8, 4\) and dtype uint8"),
        (torch.zeros(2, 4, 8, 8, dtype=torch.uint8), r"shape \(2, 4, 8, 8\)"),
        (np.zeros((8, 8, 3), np.uint8), r"shape \(8, 8, 3\)"),
        ([[0, 1, 2]], "got list"),
    ],
)
def test_bad_inputs_are_rejected(extractor, bad, message):
    with pytest.raises(EvalsuiteError, match=message):
        to_nchw_uint8(bad)
    with pytest.raises(EvalsuiteError, match=message):
        extractor(bad)


def test_headless_weights_give_no_logits(trunk_weights, images):
    assert trunk_weights.has_logits is False
    headless = InceptionFeatureExtractor(trunk_weights)
    assert headless.feature_names == ("pool", "spatial")
    features = headless(images["small"][:1])
    assert sorted(features) == ["pool", "spatial"]
    assert not hasattr(headless.network, "fc")


def test_extract_features_does_not_depend_on_batch_size(extractor, ours, images):
    nhwc = images["small"].permute(0, 2, 3, 1).numpy()
    incoming = [nhwc[:3], nhwc[3:]]
    results = {
        size: extract_features(iter(incoming), extractor, batch_size=size, total=4, progress=False)
        for size in (1, 3, 8)
    }
    for features in results.values():
        assert sorted(features) == ["logits", "pool", "spatial"]
        assert features["pool"].shape == (4, 2048) and features["pool"].dtype == np.float32
        for name in ("pool", "spatial", "logits"):
            np.testing.assert_allclose(
                features[name], ours["small"][name].numpy(), rtol=0, atol=1e-5
            )


def test_extract_features_handles_mixed_sizes_and_no_images(extractor, ours, trunk_weights, images):
    small = images["small"][:2].permute(0, 2, 3, 1).numpy()
    larger = images["larger"][:1].permute(0, 2, 3, 1).numpy()
    mixed = extract_features(iter([small, larger]), extractor, batch_size=8, progress=False)
    expected = torch.cat([ours["small"]["pool"][:2], ours["larger"]["pool"][:1]]).numpy()
    np.testing.assert_allclose(mixed["pool"], expected, rtol=0, atol=1e-5)

    headless = InceptionFeatureExtractor(trunk_weights)
    empty = extract_features(iter([]), headless, progress=False)
    assert empty["pool"].shape == (0, 2048) and empty["spatial"].shape == (0, 2023)
    assert "logits" not in empty
    with pytest.raises(EvalsuiteError, match="batch_size"):
        extract_features(iter([]), headless, batch_size=0, progress=False)


def test_fp32_precision_turns_tf32_off_for_cuda_only():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        with fp32_precision(torch.device("cuda")):
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with fp32_precision(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(full_weights, ours, images):
    gpu = InceptionFeatureExtractor(full_weights).to("cuda")
    features = gpu(images["larger"].cuda())
    for name in ("pool", "spatial", "logits"):
        torch.testing.assert_close(features[name].cpu(), ours["larger"][name], rtol=0, atol=1e-4)
