"""The ADM evaluator's Inception features (pool_3, mixed_6/conv, logits) on torch-fidelity's port.

ADM protocol §1: uint8 images, any size → TF1 bilinear resize to 299x299 → (x-128)/128 →
Inception-v3 2015-12-05. The network is torch-fidelity's FeatureExtractorInceptionV3, run
module by module so it stops after the last layer needed; for speed its BatchNorms are folded
into the convolutions and it runs in channels_last (agrees with torch-fidelity to ~1e-5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from tqdm.auto import tqdm

from evalsuite.errors import EvalsuiteError
from evalsuite.features.weights import InceptionWeights, torch_fidelity_network

# Input side of the evaluator's graph (§1): 299x299 after the TF1 resize.
INCEPTION_SIZE = 299
# sFID keeps channels 0..6 of mixed_6/conv (17x17x192) → 17*17*7 = 2023 features (§1).
SPATIAL_CHANNELS = 7
POOL_DIM = 2048
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
LOGITS_DIM = 1008

# torch-fidelity's modules up to Mixed_6d (TF mixed_6), then up to Mixed_7c (TF mixed_10).
_UP_TO_MIXED_6D = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "MaxPool_1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "MaxPool_2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
)
_UP_TO_MIXED_7C = ("Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


def to_nchw_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Check the detector's input contract and return the images as a uint8 (B,3,H,W) tensor.

    images: uint8 array or tensor, (B,3,H,W) or (B,H,W,3), any H and W. A shape that fits both
        (B,3,H,3) is read as NCHW. Anything else raises EvalsuiteError stating what it got.
    Returns a view when possible (NHWC input becomes a channels_last-strided NCHW tensor).
    """
    if isinstance(images, np.ndarray):
        kind, shape, dtype = "array", images.shape, images.dtype
    elif isinstance(images, torch.Tensor):
        kind, shape, dtype = "tensor", tuple(images.shape), images.dtype
    else:
        raise EvalsuiteError(
            f"Inception input must be a numpy array or torch tensor of uint8 images, "
            f"got {type(images).__name__}"
        )
    is_uint8 = dtype == np.uint8 if kind == "array" else dtype == torch.uint8
    layout = None
    if len(shape) == 4 and shape[1] == 3:
        layout = "NCHW"
    elif len(shape) == 4 and shape[3] == 3:
        layout = "NHWC"
    if not is_uint8 or layout is None:
        raise EvalsuiteError(
            f"Inception input must be uint8 images shaped (B,3,H,W) or (B,H,W,3) in [0,255]; "
            f"got a {kind} of shape {tuple(shape)} and dtype {dtype} (convert model outputs in "
            "[-1,1] with ((x+1)*127.5).clamp(0,255) and a cast to uint8, ADM protocol §3)"
        )
    if kind == "array":
        # A copy only when needed: torch cannot wrap read-only (e.g. memory-mapped) arrays.
        contiguous = np.ascontiguousarray(images)
        tensor = torch.from_numpy(contiguous if contiguous.flags.writeable else contiguous.copy())
    else:
        tensor = images
    return tensor.permute(0, 3, 1, 2) if layout == "NHWC" else tensor


@contextlib.contextmanager
def fp32_precision(device: torch.device) -> Iterator[None]:
    """Within the block, CUDA matmuls and convolutions run in true fp32 (TF32 off), then restore."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _fold_batch_norms(network: torch.nn.Module) -> None:
    """Fold each BasicConv2d's inference BatchNorm into its conv (w·γ/√(σ²+ε), β-μ·γ/√(σ²+ε))."""
    for unit in network.modules():
        if not isinstance(unit, BasicConv2d):
            continue
        conv, bn = unit.conv, unit.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded = torch.nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=True,
            device="meta",
        )
        folded.weight = torch.nn.Parameter(conv.weight * scale[:, None, None, None], False)
        folded.bias = torch.nn.Parameter(bn.bias - bn.running_mean * scale, False)
        unit.conv = folded
        unit.bn = torch.nn.Identity()


class InceptionFeatureExtractor(torch.nn.Module):
    """The ADM evaluator's Inception-v3 features (protocol §1) on torch-fidelity's port.

    forward(images) takes uint8 images (B,3,H,W) or (B,H,W,3), any size, and returns float32:
      "pool":    (B, 2048) pool_3;
      "spatial": (B, 2023) mixed_6/conv (Mixed_6d's 1x1 branch, post-ReLU), channels 0..6,
                 flattened in H,W,C order: index (h*17 + w)*7 + c;
      "logits":  (B, 1008) pool_3 @ softmax/weights without bias, only if `weights.has_logits`.
    """

    def __init__(self, weights: InceptionWeights) -> None:
        super().__init__()
        network = torch_fidelity_network(weights.state_dict)
        _fold_batch_norms(network)
        self.network = network.to(memory_format=torch.channels_last)
        self.has_logits = weights.has_logits
        self.feature_names = ("pool", "spatial") + (("logits",) if weights.has_logits else ())

    @torch.inference_mode()
    def forward(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a batch; see the class docstring for shapes and layout."""
        device = self.network.Conv2d_1a_3x3.conv.weight.device
        x = to_nchw_uint8(images).to(device)
        batch = x.shape[0]
        with fp32_precision(device):
            # §1: the graph's TF1 bilinear resize to 299x299 (the only resize in evalsuite).
            x = interpolate_bilinear_2d_like_tensorflow1x(
                x.to(torch.float32), size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False
            )
            # §1: then (x - 128) / 128.
            x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)
            for name in _UP_TO_MIXED_6D:
                x = getattr(self.network, name)(x)
            # §1 sFID: Mixed_6d concatenates its 1x1 branch first, so channels 0..6 of its
            # output are mixed_6/conv channels 0..6; NHWC order before flattening.
            spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(batch, SPATIAL_DIM)
            for name in _UP_TO_MIXED_7C:
                x = getattr(self.network, name)(x)
            pool = torch.flatten(self.network.AvgPool(x), 1)
            features = {"pool": pool, "spatial": spatial.contiguous()}
            if self.has_logits:
                # §1 IS: logits = pool_3 @ W, no bias (torch-fidelity's logits_unbiased).
                features["logits"] = pool.mm(self.network.fc.weight.T)
        return {name: value.to(torch.float32) for name, value in features.items()}


def _rebatched(batches: Iterable[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """Regroup uint8 image batches into NCHW tensors of `batch_size` (images of one size each)."""
    pending: list[torch.Tensor] = []
    count = 0
    for batch in batches:
        images = to_nchw_uint8(batch)
        if pending and images.shape[1:] != pending[0].shape[1:]:
            yield torch.cat(pending)
            pending, count = [], 0
        pending.append(images)
        count += images.shape[0]
        while count >= batch_size:
            merged = torch.cat(pending)
            yield merged[:batch_size]
            rest = merged[batch_size:]
            pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]
    if count:
        yield torch.cat(pending)


def extract_features(
    batches: Iterable[np.ndarray],
    extractor: InceptionFeatureExtractor,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    total: int | None = None,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, np.ndarray]:
    """Run `extractor` over image batches and concatenate its features.

    batches: uint8 arrays (B,H,W,3) (or (B,3,H,W)), regrouped into batches of `batch_size`
        (results do not depend on it). total: number of images, for the progress bar.
    The extractor is moved to `device`; the bar shows images and images/s.
    Returns {"pool": (N,2048), "spatial": (N,2023)[, "logits": (N,1008)]} float32 arrays.
    """
    if batch_size < 1:
        raise EvalsuiteError(f"batch_size must be a positive integer, got {batch_size}")
    extractor.to(device)
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in extractor.feature_names}
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for images in _rebatched(batches, batch_size):
            features = extractor(images.to(device))
            for name, value in features.items():
                outputs[name].append(value.cpu().numpy())
            bar.update(images.shape[0])
    dims = {"pool": POOL_DIM, "spatial": SPATIAL_DIM, "logits": LOGITS_DIM}
    return {
        name: np.concatenate(values) if values else np.zeros((0, dims[name]), np.float32)
        for name, values in outputs.items()
    }
