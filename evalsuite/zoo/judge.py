"""Class agreement: how often a separate clean-image classifier (the judge) assigns a sample to
the class it was generated for.

Guidance can fool the classifier it follows (its gradient is what the sampler ascends), so the
judge must be a different network: a classifier trained on clean images and evaluated at t = 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evalsuite.metrics.inception_score import inception_score
from evalsuite.models.checkpoint import LoadedModel, load_checkpoint
from evalsuite.runtime.errors import EvalsuiteError

# Images per judge forward pass (does not change the result beyond float rounding).
JUDGE_BATCH_SIZE = 64


def load_judge(
    path: str | Path, *, flags: str | None = None, preset: str | None = None
) -> LoadedModel:
    """Load a judge: a checkpoint of kind "classifier" (evalsuite or guided-diffusion layout)."""
    if not Path(path).is_file():
        raise EvalsuiteError(f"--judge {path}: no such checkpoint file")
    return load_checkpoint(path, "classifier", flags=flags, preset=preset)


def check_judge(
    judge: LoadedModel,
    *,
    image_size: int,
    num_classes: int | None,
    guiding_sha256: tuple[str, ...] = (),
) -> None:
    """Reject a judge that cannot measure these samples, before any sampling.

    image_size: resolution of the samples; num_classes: classes of the labels (None when the
    samples carry no labels); guiding_sha256: digests of the classifiers used for guidance.
    """
    config = judge.model_config
    if config.image_size != image_size:
        raise EvalsuiteError(
            f"--judge {judge.path} takes {config.image_size}x{config.image_size} images, but the "
            f"samples are {image_size}x{image_size}; use a judge trained at that resolution"
        )
    if num_classes is None:
        raise EvalsuiteError(
            f"--judge {judge.path}: class agreement needs labelled samples (a class-conditional "
            "model or a guiding --classifier); drop --judge for unconditional sampling"
        )
    if config.num_classes != num_classes:
        raise EvalsuiteError(
            f"--judge {judge.path} has {config.num_classes} classes but the samples have "
            f"{num_classes}; the judge must classify the same classes"
        )
    if judge.sha256 in guiding_sha256:
        raise EvalsuiteError(
            f"--judge {judge.path} is the classifier that guides sampling; guidance can fool it, "
            "so measure with a separately trained clean-image classifier"
        )


@torch.inference_mode()
def judge_logits(
    judge: LoadedModel, images: np.ndarray, *, device: str | torch.device = "cpu"
) -> np.ndarray:
    """The judge's logits for uint8 (N, H, W, 3) images -> float32 (N, K).

    Pixels are mapped to model space [-1, 1] (x / 127.5 - 1) and classified at timestep 0.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise EvalsuiteError(
            f"judge input must be uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}"
        )
    model = judge.model.to(device).eval()
    logits = []
    for start in range(0, len(images), JUDGE_BATCH_SIZE):
        batch = torch.from_numpy(np.array(images[start : start + JUDGE_BATCH_SIZE], copy=True))
        x = batch.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        timesteps = torch.zeros(len(x), dtype=torch.long, device=device)
        logits.append(model(x, timesteps).float().cpu().numpy())
    return np.concatenate(logits)


def judge_predictions(
    judge: LoadedModel, images: np.ndarray, *, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Classes the judge assigns to uint8 (N, H, W, 3) images -> int64 (N,) (argmax of logits)."""
    return judge_logits(judge, images, device=device).argmax(axis=1).astype(np.int64)


def judge_score(logits: np.ndarray) -> float:
    """The Inception Score's formula with the judge as the classifier: exp E_x KL(p(y|x) || p(y)).

    logits: (N, K) judge logits of N samples; one split over all of them (p(y) is the mean
    prediction of the whole set). Ranges from 1 (every sample gets the same prediction) to K
    (confident, class-balanced predictions). It is not the Inception Score: the judge knows the
    zoo's K classes, not ImageNet's, so the numbers are comparable only between zoo runs.
    """
    return inception_score(logits, split_size=max(len(logits), 1))[0]


def class_agreement(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) bool: whether the judge's class equals the requested class of each sample."""
    return np.asarray(predicted) == np.asarray(labels)
