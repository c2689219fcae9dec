"""Running a baseline's protocol: check its files, regenerate (or take) the samples, score them.

`prepare` resolves the baseline's files and checks their hashes before any sampling; `measure`
generates the samples with per-sample seeds (bitwise identical on the same CPU setup, for any
batch size or number of processes), extracts their Inception features and scores them with the
ADM protocol. Given `samples`, a batch made by `evalsuite sample`, it scores that batch instead,
once its sidecar shows that it was made from the baseline's protocol (`check_sample_batch`).

Under `torchrun` every rank calls both: rank 0 decides (hashes, files), the ranks share sampling
and feature extraction, rank 0 scores (see `ranks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalsuite.experiments.regress import ranks
from evalsuite.experiments.regress.baseline import (
    ADDED_SAMPLING_KEYS,
    DIFFUSERS,
    EMBEDDED,
    Baseline,
    CheckpointEntry,
    resolve_path,
)
from evalsuite.features.weights import WEIGHTS_ENV, weights_file_with_sha256
from evalsuite.pipeline.evaluate import (
    ReferenceSide,
    check_pr_size,
    check_reference,
    load_inception,
    make_computer,
    resolve_reference,
    score_features,
    versions,
)
from evalsuite.pipeline.featureset import FeatureComputer, FeatureSet
from evalsuite.pipeline.reference import Reference, load_reference
from evalsuite.pipeline.sample import SamplingModels, SamplingSettings, generate, sidecar_path
from evalsuite.runtime import dist
from evalsuite.runtime.cache import sha256_file
from evalsuite.runtime.errors import EvalsuiteError

# Images per Inception forward pass: the ADM evaluator's batch size (protocol §1), fixed so that
# features, and hence metrics, are bitwise reproducible on one machine.
FEATURE_BATCH_SIZE = 64


# ---------------------------------------------------------------------------------------------
# Resolving and checking the protocol (all before any sampling)


def _hash_mismatch(baseline: Baseline, what: str, path: Path, found: str, recorded: str) -> str:
    return (
        f"{baseline.path}: the protocol in the baseline no longer matches the {what}'s hash: "
        f"{path} has sha256 {found[:12]}… but the baseline records {recorded[:12]}…; not "
        f"comparing metrics of a different {what}. If the change is intended, record it with "
        f"`evalsuite regress --update {baseline.path}`"
    )


@dataclass
class Protocol:
    """A baseline's protocol, resolved and checked: models loaded (None when scoring a given
    sample batch), reference opened, Inception weights and network loaded."""

    baseline: Baseline
    models: SamplingModels | None
    reference: Reference
    ref_stats_mode: str
    weights: Any
    extractor: torch.nn.Module
    hashes: dict[str, str]


@dataclass(frozen=True)
class _Files:
    """What rank 0 checked: the resolved paths and the sha256 of each file of the protocol."""

    paths: dict[str, Path]
    hashes: dict[str, str]


def _checked_file(baseline: Baseline, entry: str, key: str, what: str) -> Path:
    path = resolve_path(entry, baseline.path)
    if not path.exists():
        raise EvalsuiteError(
            f"{baseline.path}: {what} {path} (`{key}` = {entry!r}) does not exist; restore it or "
            "fix the path (relative paths start at the baseline's folder)"
        )
    return path


def _checkpoints(baseline: Baseline) -> list[tuple[str, CheckpointEntry]]:
    entries = [("model", baseline.model)]
    if baseline.classifier is not None:
        entries.append(("classifier", baseline.classifier))
    return entries


def _check_files(
    baseline: Baseline,
    verify: bool,
    samples: str | os.PathLike[str] | None,
    keep_samples: str | os.PathLike[str] | None,
) -> _Files:
    """Resolve and hash the checkpoints (unless `samples` is given) and the reference."""
    if keep_samples is not None and Path(keep_samples).exists():
        raise EvalsuiteError(f"--keep-samples {keep_samples} exists; choose a new file name")
    paths: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    if samples is not None:
        hashes.update(check_sample_batch(baseline, Path(samples)))
    else:
        for role, entry in _checkpoints(baseline):
            path = _checked_file(baseline, entry.path, f"{role}.path", f"{role} checkpoint")
            paths[role], hashes[role] = path, _checkpoint_hash(entry, path)
            if verify and hashes[role] != entry.sha256:
                raise EvalsuiteError(
                    _hash_mismatch(baseline, f"{role} checkpoint", path, hashes[role], entry.sha256)
                )
    path = _checked_file(baseline, baseline.reference.path, "reference.path", "reference")
    paths["reference"] = path
    hashes["reference"] = sha256_file(path) if path.is_file() else _folder_hash(path)
    if verify and hashes["reference"] != baseline.reference.sha256:
        raise EvalsuiteError(
            _hash_mismatch(
                baseline, "reference", path, hashes["reference"], baseline.reference.sha256
            )
        )
    return _Files(paths, hashes)


def prepare(
    baseline: Baseline,
    *,
    verify: bool = True,
    inception_weights: str | None = None,
    device: str = "cpu",
    samples: str | os.PathLike[str] | None = None,
    keep_samples: str | os.PathLike[str] | None = None,
) -> Protocol:
    """Resolve files, check hashes (`verify`) and load everything a run needs, before sampling.

    With verify=False (update/init) the current hashes are recorded instead of compared; the
    reference statistics must still have been computed with the Inception weights in use. Given
    `samples` (a batch made by `evalsuite sample`), its sidecar must match the baseline and no
    checkpoint is read. Under torchrun rank 0 checks the files; every rank loads.
    """
    files = ranks.on_main(lambda: _check_files(baseline, verify, samples, keep_samples))
    return ranks.on_every_rank(
        lambda: _load(baseline, files, verify, inception_weights, device, samples is None)
    )


def _load(
    baseline: Baseline,
    files: _Files,
    verify: bool,
    inception_weights: str | None,
    device: str,
    load_models: bool,
) -> Protocol:
    from evalsuite.models.checkpoint import load_checkpoint
    from evalsuite.models.diffusers_source import load_diffusers

    hashes = dict(files.hashes)
    reference_path = files.paths["reference"]
    reference = load_reference(reference_path)
    reference_weights = (reference.meta or {}).get("weights_sha256")
    recorded_weights = baseline.evaluation.inception_weights_sha256
    if verify and reference_weights is not None and reference_weights != recorded_weights:
        raise EvalsuiteError(
            f"{baseline.path}: reference statistics {reference_path} were computed with Inception "
            f"weights {reference_weights[:12]}… but the baseline records {recorded_weights[:12]}…; "
            "use statistics made with the baseline's weights (`evalsuite ref-stats`)"
        )
    if inception_weights is None and recorded_weights and not os.environ.get(WEIGHTS_ENV):
        # The baseline's own weights when they are here, even if others are the default.
        found = weights_file_with_sha256(recorded_weights)
        inception_weights = None if found is None else str(found)
    weights, extractor = load_inception(inception_weights, device)
    if verify and weights.sha256 != recorded_weights:
        raise EvalsuiteError(
            f"{baseline.path}: evaluating with Inception weights {weights.sha256[:12]}… "
            f"({weights.source}) but the baseline was made with {recorded_weights[:12]}…; pass "
            "the baseline's weights with --inception-weights"
        )
    if reference_weights is not None and reference_weights != weights.sha256:
        raise EvalsuiteError(
            f"reference statistics {reference_path} were computed with Inception weights "
            f"{reference_weights[:12]}… but the weights in use are {weights.sha256[:12]}… "
            f"({weights.source}); recompute them with `evalsuite ref-stats` or pass matching "
            "--inception-weights"
        )
    hashes["inception_weights"] = weights.sha256
    if "inception_score" in baseline.metrics and not weights.has_logits:
        from evalsuite.features import IS_UNAVAILABLE

        raise EvalsuiteError(f"{baseline.path}: [metrics.inception_score]: {IS_UNAVAILABLE}")

    models = None
    if load_models:
        loaded = {}
        for role, entry in _checkpoints(baseline):
            kind = "unet" if role == "model" else "classifier"
            if entry.architecture == DIFFUSERS:
                loaded[role] = load_diffusers(str(files.paths[role]))
            else:
                loaded[role] = load_checkpoint(files.paths[role], kind, **entry.load_arguments())
        models = SamplingModels(model=loaded["model"], classifier=loaded.get("classifier"))
        models.check(baseline.sampling)
    options = baseline.evaluation.metric_options()
    mode = check_reference(reference, baseline.metric_groups, baseline.reference.ref_stats, options)
    if "pr" in baseline.metric_groups:
        check_pr_size("samples", baseline.sampling.num_samples, options)
    if "kid" in baseline.metric_groups and baseline.sampling.num_samples < 2:
        raise EvalsuiteError(f"{baseline.path}: KID needs at least 2 samples")
    return Protocol(baseline, models, reference, mode, weights, extractor, hashes)


def _checkpoint_hash(entry: CheckpointEntry, path: Path) -> str:
    """A checkpoint file's sha256, or a diffusers folder's hash (over its files)."""
    if entry.architecture != DIFFUSERS:
        return sha256_file(path)
    from evalsuite.models.diffusers_source import folder_sha256

    if not path.is_dir():
        raise EvalsuiteError(f'{path}: a diffusers model is a folder (architecture = "diffusers")')
    return folder_sha256(path)


def _folder_hash(folder: Path) -> str:
    from evalsuite.pipeline.batches import open_images

    return open_images(folder, role="reference").fingerprint()


# ---------------------------------------------------------------------------------------------
# A sample batch made elsewhere (`evalsuite sample` on a GPU job, scored on a CPU runner)


def _architecture_config(entry: CheckpointEntry, kind: str) -> dict[str, Any] | None:
    """The model config that a preset:/flags: architecture implies (None for embedded ones)."""
    from evalsuite.models.config import build_configs, config_to_dict, preset_configs

    arguments = entry.load_arguments()
    if entry.architecture in (EMBEDDED, DIFFUSERS):
        return None
    if arguments["preset"] is not None:
        config, _ = preset_configs(arguments["preset"])
    else:
        config, _ = build_configs(arguments["flags"], kind=kind)
    return json.loads(json.dumps(config_to_dict(config)))


def check_sample_batch(baseline: Baseline, samples: Path) -> dict[str, str]:
    """Check that `samples` was made by `evalsuite sample` from the baseline's protocol.

    Its sidecar (`samples` with .json) must record the baseline's checkpoints (sha256, and the
    configuration of preset:/flags: architectures), every sampling setting (N and seed included);
    the batch must hold N images. Returns the checkpoints' sha256 by role; raises
    `EvalsuiteError` naming the first difference.
    """
    from evalsuite.pipeline.batches import open_images

    what = f"--samples {samples}"
    source = open_images(samples, role="samples")
    sidecar = sidecar_path(samples)
    if samples.is_dir() or not sidecar.is_file():
        raise EvalsuiteError(
            f"{what}: no {sidecar.name} next to it; --samples takes a batch made by "
            "`evalsuite sample`, whose sidecar records how it was made"
        )
    try:
        identity = json.loads(sidecar.read_text())["identity"]
        recorded_settings = identity["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise EvalsuiteError(
            f"{what}: {sidecar} is not a sidecar written by `evalsuite sample`"
        ) from None

    def mismatch(key: str, batch: Any, expected: Any) -> EvalsuiteError:
        return EvalsuiteError(
            f"{what} was not made from the baseline's protocol: {key} is {batch!r} in "
            f"{sidecar.name} but {expected!r} in {baseline.path}; sample with the baseline's "
            "settings, or check without --samples"
        )

    hashes: dict[str, str] = {}
    for role, entry in (("model", baseline.model), ("classifier", baseline.classifier)):
        made_with = identity.get(role)
        if entry is None or made_with is None:
            if entry is not None or made_with is not None:
                batch_text = None if made_with is None else made_with.get("sha256")
                expected = None if entry is None else entry.sha256
                raise mismatch(f"the {role} checkpoint (sha256)", batch_text, expected)
            continue
        if made_with.get("sha256") != entry.sha256:
            raise mismatch(f"{role}.sha256", made_with.get("sha256"), entry.sha256)
        expected_config = _architecture_config(entry, "unet" if role == "model" else "classifier")
        if expected_config is not None:
            config = made_with.get("config") or {}
            for key in sorted(set(config) | set(expected_config)):
                if config.get(key) != expected_config.get(key):
                    raise mismatch(
                        f"{role} architecture `{key}`", config.get(key), expected_config.get(key)
                    )
        hashes[role] = entry.sha256
    for field in dataclasses.fields(SamplingSettings):
        expected = getattr(baseline.sampling, field.name)
        if field.name in recorded_settings:
            batch_value = recorded_settings[field.name]
        elif field.name in ADDED_SAMPLING_KEYS:
            batch_value = field.default
        else:
            batch_value = "(not recorded)"
        if batch_value != expected:
            raise mismatch(f"sampling.{field.name}", batch_value, expected)
    source.require_images()
    if source.num_images != baseline.sampling.num_samples:
        raise mismatch("the number of images", source.num_images, baseline.sampling.num_samples)
    return hashes


# ---------------------------------------------------------------------------------------------
# Sampling and scoring


@dataclass
class Measurement:
    """Metric values of one run of the protocol and what the bootstrap needs to resample them."""

    values: dict[str, float | None]
    sample_features: FeatureSet
    reference_side: ReferenceSide
    samples_sha256: str
    seconds: dict[str, float]


def samples_digest(path: Path) -> str:
    """sha256 of a sample batch's arrays (arr_0 images, arr_1 labels), not of the zip bytes."""
    digest = hashlib.sha256()
    with np.load(path) as data:
        for key in ("arr_0", "arr_1"):
            if key in data.files:
                array = np.ascontiguousarray(data[key])
                digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
                digest.update(array.tobytes())
    return digest.hexdigest()


class _RunFeatures(FeatureComputer):
    """Feature chunks kept in the run's own folder: every rank reads the others' chunks there,
    and nothing of a regression run is left in the user cache."""

    def __init__(self, folder: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, use_cache=True, **kwargs)
        self.folder = folder

    def chunk_dir(self, fingerprint: str) -> Path:
        return self.folder / "features"


@contextlib.contextmanager
def _run_folder() -> Iterator[Path]:
    """A temporary folder that every rank uses (made by rank 0), removed once all are done."""
    created = tempfile.mkdtemp(prefix="evalsuite-regress-") if dist.is_main() else None
    with ranks.collective("the start of the run"):
        folder = Path(dist.broadcast_from_main(created))
    try:
        yield folder
        with ranks.collective("the end of the run"):
            dist.barrier()
    finally:
        if dist.is_main():
            shutil.rmtree(folder, ignore_errors=True)


def measure(
    protocol: Protocol,
    *,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    keep_samples: str | os.PathLike[str] | None = None,
    samples: str | os.PathLike[str] | None = None,
) -> Measurement | None:
    """Generate the protocol's samples (in a temporary folder, removed afterwards) and score them.

    With `samples` (checked by `prepare`) that batch is scored instead. Under torchrun every rank
    calls this: sampling and feature extraction are shared, rank 0 scores and gets the
    Measurement, the other ranks None.
    """
    baseline = protocol.baseline
    options = baseline.evaluation.metric_options()
    seconds: dict[str, float] = {}
    from evalsuite.pipeline.batches import open_images

    with _run_folder() as folder:
        if samples is not None:
            out = Path(samples)
        else:
            out = Path(keep_samples) if keep_samples is not None else folder / "samples.npz"
            started = time.perf_counter()
            with ranks.collective("sampling"):
                generate(
                    protocol.models,
                    baseline.sampling,
                    out,
                    batch_size=batch_size,
                    device=device,
                    progress=progress,
                )
            seconds["sampling"] = time.perf_counter() - started
        started = time.perf_counter()
        arguments = (protocol.extractor, protocol.weights.sha256, protocol.weights.has_logits)
        settings = {"device": device, "batch_size": FEATURE_BATCH_SIZE, "progress": progress}
        if dist.world()[1] > 1:
            sample_computer = _RunFeatures(folder, *arguments, **settings)
        else:
            sample_computer = FeatureComputer(*arguments, **settings, use_cache=False)
        with ranks.collective("feature extraction"):
            sample_features = sample_computer.compute(
                open_images(out, role="samples"), desc="sample features"
            )
        digest = samples_digest(out) if dist.is_main() else ""
    reference_computer = make_computer(
        protocol.weights,
        protocol.extractor,
        device=device,
        batch_size=FEATURE_BATCH_SIZE,
        progress=progress,
    )
    with ranks.collective("reference feature extraction"):
        reference_side = resolve_reference(
            protocol.reference, baseline.metric_groups, protocol.ref_stats_mode, reference_computer
        )

    def score() -> Measurement:
        values = score_features(
            sample_features, reference_side, baseline.metric_groups, options, device
        )
        seconds["evaluation"] = time.perf_counter() - started
        measured = {name: values[name] for name in baseline.metrics}
        for name, value in measured.items():
            if value is None:
                raise EvalsuiteError(f"{baseline.path}: metric {name} could not be computed")
        return Measurement(measured, sample_features, reference_side, digest, seconds)

    return ranks.on_main(score, share=False)


def environment(device: str) -> dict[str, Any]:
    """What can change the last bits of samples: device, threads, machine and library versions."""
    info: dict[str, Any] = {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "system": platform.system(),
        "versions": versions(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
