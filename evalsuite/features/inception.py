"""The ADM evaluator's Inception features (pool_3, mixed_6/conv, logits) on torch-fidelity's port.

ADM protocol §1: uint8 images, any size → TF1 bilinear resize to 299x299 → (x-128)/128 →
Inception-v3 2015-12-05. The network is torch-fidelity's FeatureExtractorInceptionV3, run
module by module so it stops after the last layer needed. For speed: the resize is computed
separably (bit-identical to torch-fidelity's), each conv+BatchNorm+ReLU unit becomes one conv
with the BatchNorm (and, for the first, the input normalisation) folded in, fused with its ReLU
on pre-packed weights on CPU, and activations stay channels_last. Features agree with
torch-fidelity's extractor to ~1e-5.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d
from tqdm.auto import tqdm

from evalsuite.features.weights import InceptionWeights, torch_fidelity_network
from evalsuite.runtime.errors import EvalsuiteError
from evalsuite.runtime.threads import CoreWorkers

# Input side of the evaluator's graph (§1): 299x299 after the TF1 resize.
INCEPTION_SIZE = 299
# sFID keeps channels 0..6 of mixed_6/conv (17x17x192) → 17*17*7 = 2023 features (§1).
SPATIAL_CHANNELS = 7
POOL_DIM = 2048
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
LOGITS_DIM = 1008
# On CPU, images go through the network in chunks of at most this many (see forward).
CPU_CHUNK = 8

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


def tf1_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 bilinear resize (align_corners=False) of uint8 images to size x size, as float32 NHWC.

    images: (B,3,H,W) uint8 (any strides). Returns (B,size,size,3) float32, bit-identical to
    torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x on the same images: the same
    interpolation weights and the same float32 operations per output pixel, but computed
    separably (columns on the H input rows first, then rows), so each input row is
    interpolated once instead of four gathers of the full output.
    """
    x = images.permute(0, 2, 3, 1).to(torch.float32)  # NHWC
    height, width = x.shape[1], x.shape[2]
    if height == width == size:
        return x.contiguous()

    def grid(in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # TF1 (half_pixel_centers=False): source = destination * in/out, neighbour clamped.
        step = torch.tensor(in_size / size, dtype=torch.float32)
        position = torch.arange(size, dtype=torch.float32, device=x.device) * step
        low = position.long()
        return low, (low + 1).clamp_max(in_size - 1), position - low.float()

    x_low, x_high, dx = grid(width)
    y_low, y_high, dy = grid(height)
    left = x[:, :, x_low]
    columns = left + (x[:, :, x_high] - left) * dx[None, None, :, None]
    top = columns[:, y_low]
    return top + (columns[:, y_high] - top) * dy[None, :, None, None]


class ConvReLU(torch.nn.Module):
    """One BasicConv2d of the port with its BatchNorm folded in: relu(conv(x) + bias).

    On CPU with oneDNN the convolution and the ReLU run as one fused kernel on weights packed
    once into oneDNN's blocked layout (for the input's channels and size, valid for any batch);
    elsewhere (CUDA, builds without oneDNN) it is conv2d then relu. Same arithmetic up to
    float rounding.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self._packed: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and _ONEDNN_FUSED and x.dtype == torch.float32:
            key = tuple(x.shape[1:])
            packed = self._packed  # one read: chunks run in several threads at once
            if packed is None or packed[0] != key:
                # The packing is chosen for a chunk-sized batch and is valid for any batch.
                weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    self.weight.to_mkldnn(),
                    self.padding,
                    self.stride,
                    (1, 1),
                    1,
                    [CPU_CHUNK, *x.shape[1:]],
                )
                packed = self._packed = (key, weight)
            return torch.ops.mkldnn._convolution_pointwise(
                x, packed[1], self.bias, self.padding, self.stride, (1, 1), 1, "relu", [], ""
            )
        return torch.relu_(
            torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        )

    def _apply(self, fn, recurse=True):
        self._packed = None  # device or dtype moves drop the packed copy
        return super()._apply(fn, recurse)


def _onednn_fused_available() -> bool:
    """Whether this torch build has oneDNN's fused conv+ReLU and weight packing on CPU."""
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
        )
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_FUSED = _onednn_fused_available()


def _fuse_units(network: torch.nn.Module) -> None:
    """Replace each BasicConv2d (conv, inference BN, ReLU) by a ConvReLU with the BN folded in.

    Folding: w·γ/√(σ²+ε) and β - μ·γ/√(σ²+ε). The first convolution also absorbs the input
    normalisation (x-128)/128 of §1: w/128 and b - Σw (it has no padding, so this is exact
    up to rounding).
    """
    for parent in list(network.modules()):
        for name, unit in list(parent.named_children()):
            if not isinstance(unit, BasicConv2d):
                continue
            conv, bn = unit.conv, unit.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale[:, None, None, None]
            bias = bn.bias - bn.running_mean * scale
            if unit is network.Conv2d_1a_3x3:
                assert tuple(conv.padding) == (0, 0)
                bias = bias - weight.sum(dim=(1, 2, 3))
                weight = weight / 128
            fused = ConvReLU(weight.contiguous(memory_format=torch.channels_last), bias, conv)
            setattr(parent, name, fused)


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
        with torch.no_grad():
            _fuse_units(network)
        self.network = network
        self.has_logits = weights.has_logits
        self.feature_names = ("pool", "spatial") + (("logits",) if weights.has_logits else ())
        self._workers: CoreWorkers | None = None

    def forward(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a batch; see the class docstring for shapes and layout.

        On CPU the batch goes through in chunks of at most CPU_CHUNK images, one chunk per
        core at a time on a single thread each (evalsuite.runtime.threads): faster than whole-batch
        passes on all threads, and each image's features do not depend on the batch around it.
        """
        device = self.network.Conv2d_1a_3x3.weight.device
        x = to_nchw_uint8(images).to(device)
        if device.type != "cpu" or x.shape[0] <= 1:
            return self._features(x)
        if self._workers is None:
            self._workers = CoreWorkers()
        chunk = min(CPU_CHUNK, -(-x.shape[0] // self._workers.size))
        parts = self._workers.map(self._features, x.split(chunk))
        return {name: torch.cat([part[name] for part in parts]) for name in self.feature_names}

    @torch.inference_mode()
    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of uint8 NCHW images on the network's device, in this thread."""
        device = x.device
        batch = x.shape[0]
        with fp32_precision(device):
            # §1: the graph's TF1 bilinear resize to 299x299 (the only resize in evalsuite);
            # its (x - 128) / 128 is folded into the first convolution (_fuse_units).
            x = tf1_resize(x, INCEPTION_SIZE).permute(0, 3, 1, 2)  # channels_last NCHW
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
