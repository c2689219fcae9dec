"""Timing measurements for `plan.calibrate`: sampling steps and Inception batches on a device.

Networks of the run's architectures get fresh random weights (the arithmetic, and so the time,
does not depend on the values), so nothing is read from the checkpoints' weights and the real
Inception weights are never resolved.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from evalsuite.experiments.grid import Cell, SweepConfig
from evalsuite.models.checkpoint import LoadedModel
from evalsuite.pipeline.sample import SamplingModels

# Sampling steps timed per calibration measurement (after a two-step warm-up chain).
CALIBRATION_STEPS = 3


@dataclass(frozen=True)
class Calibration:
    """Measured costs on one device: seconds per sampling step of a batch, per Inception image.

    step_seconds maps "<first row of that architecture> <sampler> guided|unguided" (e.g.
    "conditional ddim guided") to the seconds one chain step takes for a batch of `sampling_batch` samples; inception_seconds_per_image is measured
    on batches of `inception_batch` images at the models' resolution.
    """

    device: str
    device_name: str
    sampling_batch: int
    step_seconds: dict[str, float]
    inception_batch: int
    inception_seconds_per_image: float
    seconds: float


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _random_network(loaded: LoadedModel, seed: int, device: str) -> LoadedModel:
    """A network of the same architecture with fresh random weights, built on `device` (for
    timing only: a 256x256 ADM UNet has 554M parameters, slow to initialise on a CPU)."""
    from evalsuite.models import build_model

    target = torch.device(device)
    generator = torch.Generator(target).manual_seed(seed)
    with target:
        network = build_model(loaded.model_config)
    with torch.no_grad():
        for param in network.parameters():
            # Zero-initialised output layers get values too, so every path computes.
            noise = torch.randn(param.shape, generator=generator, device=target)
            param.add_(0.02 * noise)
    return LoadedModel(
        model=network.eval(),
        model_config=loaded.model_config,
        diffusion_config=loaded.diffusion_config,
        sha256="",
        source="random (timing)",
        path=loaded.path,
    )


def time_sampling_step(
    models: SamplingModels,
    config: SweepConfig,
    cell: Cell,
    *,
    batch: int,
    device: str,
    steps: int = CALIBRATION_STEPS,
) -> float:
    """Seconds per chain step of the real sampler for a batch of `batch` samples of `cell`.

    Runs `BatchSampler` (the code path of a run, classifier gradient included when the cell is
    guided) on a `steps`-step chain after a two-step warm-up chain (the shortest a chain can
    be) and divides the time by `steps`.
    """
    from evalsuite.pipeline.sample import BatchSampler

    indices = list(range(batch))
    settings = config.settings(cell)
    warm = replace(settings, steps="2")
    timed = replace(settings, steps=str(steps))
    BatchSampler(models, warm, device)(indices)
    sampler = BatchSampler(models, timed, device)
    _synchronize(torch.device(device))
    started = time.perf_counter()
    sampler(indices)
    _synchronize(torch.device(device))
    return (time.perf_counter() - started) / steps


def random_inception(seed: int = 0):
    """The evaluator's Inception network (torch-fidelity's port) with random weights.

    Same architecture, fused units and code path as the real extractor, so it takes the same
    time; built without resolving (or converting and caching) the real weights.
    """
    from evalsuite.features import InceptionFeatureExtractor, InceptionWeights
    from evalsuite.features.weights import torch_fidelity_network

    generator = torch.Generator().manual_seed(seed)
    shapes = {
        name: tuple(tensor.shape)
        for name, tensor in torch_fidelity_network(None).state_dict().items()
        if not name.endswith("num_batches_tracked")
    }
    state_dict = {}
    for name, shape in shapes.items():
        if name.endswith("running_var") or name.endswith("bn.weight"):
            tensor = torch.ones(shape)
        elif name.endswith("running_mean") or name.endswith("bias"):
            tensor = torch.zeros(shape)
        else:
            # He initialisation keeps activations in range through the ReLU stack.
            fan_in = int(np.prod(shape[1:]))
            tensor = torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)
        state_dict[name] = tensor
    weights = InceptionWeights(
        state_dict=state_dict, source="random (timing)", path="", sha256="", has_logits=True
    )
    return InceptionFeatureExtractor(weights)


def time_inception(*, image_size: int, batch: int, device: str, repeats: int = 2) -> float:
    """Seconds per image of Inception features on `device`, batches of `batch` random images."""
    extractor = random_inception().to(device).eval()
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    target = torch.device(device)
    extractor(images)
    _synchronize(target)
    started = time.perf_counter()
    for _ in range(repeats):
        extractor(images)
    _synchronize(target)
    return (time.perf_counter() - started) / (repeats * batch)
