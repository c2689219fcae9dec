"""evalsuite: the ADM evaluation protocol as one tool.

Generate sample sets from ADM-style checkpoints (DDPM/DDIM, classifier guidance) and score them
with FID, sFID, Inception Score, improved precision/recall and KID exactly as the ADM evaluator does.

The Python entry points (each imports torch and the rest only when called, so `import evalsuite`
stays cheap):

    load_checkpoint(path, kind="unet", preset=None, flags=None)   a UNet or classifier
    sample(model, out, classifier=None, **settings)                 an ADM sample batch (.npz)
    evaluate(reference, samples, metrics=None, **options)           FID, sFID, IS, P/R, KID
    sweep(config, run_dir, **options)                               a guidance-scale grid
    SweepConfig, ModelRow                                           what `sweep` runs

The embedded zoo's files: `evalsuite.zoo.asset("cond_unet.pt")`, `evalsuite.zoo.reference()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Version of the feature/statistics protocol; part of every cache key and stats file.
PROTOCOL_VERSION = "adm-1"

if TYPE_CHECKING:
    from evalsuite.experiments.sweep import ModelRow, SweepConfig
    from evalsuite.models.checkpoint import LoadedModel

__all__ = [
    "PROTOCOL_VERSION",
    "ModelRow",
    "SweepConfig",
    "__version__",
    "evaluate",
    "load_checkpoint",
    "sample",
    "sweep",
]

PathLike = str | os.PathLike[str]


def load_checkpoint(
    path: PathLike,
    kind: str = "unet",
    *,
    preset: str | None = None,
    flags: str | None = None,
    map_location: Any = "cpu",
) -> LoadedModel:
    """Load a diffusion UNet (`kind="unet"`) or a noise-aware classifier (`kind="classifier"`).

    path: a guided-diffusion state dict (e.g. the released `256x256_diffusion.pt`), which needs
        `preset` (a released file's name, e.g. "256x256_diffusion") or `flags` (guided-diffusion's
        flag string, e.g. "--image_size 64 --num_channels 192 ..."); or an evalsuite checkpoint
        (the zoo's, or one written by `evalsuite train`), which carries its own configuration.
    Returns a `LoadedModel`: the float32 network in eval mode, its configs, sha256 and source.
    A file that does not fit the architecture raises `EvalsuiteError` naming the likely flag.
    """
    from evalsuite.models.checkpoint import load_checkpoint as load

    return load(path, kind, flags=flags, preset=preset, map_location=map_location)


def _loaded(model: LoadedModel | PathLike, kind: str) -> LoadedModel:
    if isinstance(model, (str, os.PathLike)):
        return load_checkpoint(model, kind)
    return model


def sample(
    model: LoadedModel | PathLike,
    out: PathLike,
    *,
    classifier: LoadedModel | PathLike | None = None,
    num_samples: int = 16,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Draw `num_samples` samples into `out`, an ADM sample batch (.npz), resuming if possible.

    model / classifier: `LoadedModel`s from `load_checkpoint`, or paths of evalsuite
        checkpoints. A classifier is needed for `guidance_scale > 0`.
    settings: the sampling settings of `evalsuite sample` (`SamplingSettings`): sampler ("ddpm"
        or "ddim"), steps ("250", "ddim25", ...), eta, guidance_scale, classes ("uniform",
        "balanced", "3" or "0,1,2"), seed, precision ("fp32", "fp16", "bf16").
    The file holds `arr_0` uint8 (N, H, W, 3) and `arr_1` int64 labels; sample i depends only
    on (seed, i). Returns the record also written beside it as JSON (configs, sha256s, seeds).
    """
    from evalsuite.pipeline.sample import SamplingModels, SamplingSettings, generate

    models = SamplingModels(
        model=_loaded(model, "unet"),
        classifier=None if classifier is None else _loaded(classifier, "classifier"),
    )
    return generate(
        models,
        SamplingSettings(num_samples=num_samples, **settings),
        out,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


def evaluate(
    reference: PathLike,
    samples: PathLike,
    *,
    metrics: str | tuple[str, ...] | None = None,
    inception_weights: PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Score `samples` against `reference` with the ADM evaluator's protocol.

    reference: an ADM reference batch (`VIRTUAL_*.npz`), a file of `evalsuite ref-stats`, or a
        folder of images (e.g. `evalsuite.zoo.reference()`).
    samples: an ADM sample batch (.npz with `arr_0` uint8 N,H,W,3) or a folder of images.
    metrics: any of "fid", "sfid", "is", "pr", "kid" (tuple or "fid,pr"); default all.
    options: `ref_stats` ("auto", "stored", "recompute") and `options` (`MetricOptions`).
    Returns a flat dict: `fid`, `sfid`, `inception_score` (None without the classifier head:
    `evalsuite weights fetch`), `precision`, `recall`, `kid`, sizes and provenance.
    """
    from evalsuite.pipeline.evaluate import METRICS, parse_metrics
    from evalsuite.pipeline.evaluate import evaluate as run

    return run(
        str(reference),
        str(samples),
        metrics=parse_metrics(metrics) if metrics is not None else METRICS,
        inception_weights=None if inception_weights is None else str(inception_weights),
        device=device,
        batch_size=batch_size,
        progress=progress,
        **options,
    )


def sweep(
    config: SweepConfig,
    run_dir: PathLike,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    keep_samples: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or finish) a grid of models x guidance scales x samplers x steps into `run_dir`.

    config: a `SweepConfig`, e.g.
        SweepConfig(rows=(ModelRow("uncond", "uncond.pt", classifier="classifier.pt"),),
                    reference="ref.npz", scales=(0.0, 1.0, 4.0), num_samples=100)
    Every cell is sampled with the same seeds, scored, and appended to `run_dir/records.jsonl`;
    finished cells of an interrupted run are skipped. Returns one flat record per cell (settings,
    metrics, bootstrap intervals, timings). `evalsuite report RUN_DIR` draws tables and curves.
    """
    from evalsuite.experiments.sweep import run_sweep

    return run_sweep(
        config,
        Path(run_dir),
        batch_size=batch_size,
        device=device,
        keep_samples=keep_samples,
        progress=progress,
    )


def __getattr__(name: str) -> Any:
    # The sweep's configuration types, imported on first use.
    if name in ("SweepConfig", "ModelRow"):
        from evalsuite.experiments import sweep as sweep_module

        return getattr(sweep_module, name)
    raise AttributeError(f"module 'evalsuite' has no attribute {name!r}")
