"""`regress`: CI regression checks of sample quality against a committed baseline file.

A baseline (TOML, read with `tomllib`, written by `baseline_to_toml`) fixes a protocol — the
checkpoints and their sha256, their architecture, every sampling setting (N and seed included),
the reference statistics and the Inception weights' sha256 — and the metric values it produced,
each with a tolerance:

- `abs = x`: the metric may be worse than `expected` by at most x (metric units);
- `rel = r`: worse by at most r * |expected|;
- `ci = c`: not worse than `bound`, the baseline's one-sided bootstrap bound at confidence c.

"Worse" follows each metric's direction (lower is better for FID, sFID and KID; higher for the
Inception Score, precision and recall). `check` regenerates the samples with per-sample seeds
(bitwise identical on the same CPU setup), scores them with the ADM protocol and compares; a
protocol that no longer matches (a checkpoint, reference or Inception weights with another hash)
raises `EvalsuiteError` instead of comparing different things. `update` rewrites the expected
values, bounds and hashes after an intended change, keeping the tolerances; `init` writes a new
baseline from the current model.

Bootstrap bounds resample the sample rows with replacement (a seeded numpy Generator); the
replicates come from `evalsuite.experiments.bootstrap.SampleScorer` (exact O(n^2) shortcuts for FID, sFID and
precision/recall) and, for KID, from `KIDResampler` (exact per-subset kernel sums).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalsuite import zoo
from evalsuite.pipeline.evaluate import (
    REF_STATS_CHOICES,
    MetricOptions,
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
from evalsuite.pipeline.sample import SamplingModels, SamplingSettings, generate
from evalsuite.runtime.cache import atomic_path, sha256_file
from evalsuite.runtime.errors import EvalsuiteError

BASELINE_FORMAT = "evalsuite-regress-baseline"
BASELINE_VERSION = 1
ZOO_PREFIX = "zoo:"
EMBEDDED = "embedded"
PRESET_PREFIX = "preset:"
FLAGS_PREFIX = "flags:"
# Images per Inception forward pass: the ADM evaluator's batch size (protocol §1), fixed so that
# features, and hence metrics, are bitwise reproducible on one machine.
FEATURE_BATCH_SIZE = 64

# Metric names of a baseline (the keys of `score_features`) -> the evaluate metric computing them.
METRIC_GROUPS = {
    "fid": "fid",
    "sfid": "sfid",
    "inception_score": "is",
    "precision": "pr",
    "recall": "pr",
    "kid": "kid",
}
LOWER_IS_BETTER = frozenset({"fid", "sfid", "kid"})
TOLERANCE_KINDS = ("abs", "rel", "ci")
STATUS_PASS, STATUS_FAIL, STATUS_BETTER = "PASS", "FAIL", "BETTER"
# Status of every metric in the report of --update/--init: the run's values became the baseline.
STATUS_RECORDED = "RECORDED"


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move towards "worse": `kind` abs | rel | ci and its `amount`.

    abs: metric units; rel: fraction of |expected|; ci: confidence level in [0.5, 1) of the
    baseline's one-sided bootstrap bound.
    """

    kind: str
    amount: float

    def describe(self) -> str:
        if self.kind == "abs":
            return f"abs {self.amount:g}"
        return f"{self.kind} {100 * self.amount:g}%"


@dataclass(frozen=True)
class Expectation:
    """A metric's expected value and tolerance; `bound` is the bootstrap bound (ci only)."""

    expected: float | None
    tolerance: Tolerance
    bound: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint of the protocol.

    path: "zoo:NAME" (the embedded zoo) or a path, relative paths taken from the baseline's
    folder; sha256: the file's digest; architecture: "embedded" (evalsuite checkpoint),
    "preset:NAME" or "flags:--image_size 64 ..." (bare guided-diffusion state dicts).
    """

    path: str
    sha256: str | None
    architecture: str = EMBEDDED

    def load_arguments(self) -> dict[str, str | None]:
        """The `flags`/`preset` arguments of `load_checkpoint` for this architecture."""
        if self.architecture == EMBEDDED:
            return {"flags": None, "preset": None}
        if self.architecture.startswith(PRESET_PREFIX):
            return {"flags": None, "preset": self.architecture[len(PRESET_PREFIX) :].strip()}
        return {"flags": self.architecture[len(FLAGS_PREFIX) :].strip(), "preset": None}


@dataclass(frozen=True)
class ReferenceEntry:
    """The reference side: path (as for checkpoints), its sha256, and the ref-stats choice."""

    path: str
    sha256: str | None
    ref_stats: str = "auto"


@dataclass(frozen=True)
class EvaluationEntry:
    """Inception weights and every option that changes a metric value, plus the bootstrap."""

    inception_weights_sha256: str | None
    pr_k: int = 3
    is_split_size: int = 5000
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_seed: int = 0
    fid_method: str = "eigh"
    bootstrap_resamples: int = 200
    bootstrap_seed: int = 0

    def metric_options(self) -> MetricOptions:
        return MetricOptions(
            pr_k=self.pr_k,
            is_split_size=self.is_split_size,
            kid_subsets=self.kid_subsets,
            kid_subset_size=self.kid_subset_size,
            kid_seed=self.kid_seed,
            fid_method=self.fid_method,
        )


@dataclass(frozen=True)
class Baseline:
    """A parsed baseline file. `metrics` keeps the file's order; `provenance` is informative."""

    path: Path
    model: CheckpointEntry
    classifier: CheckpointEntry | None
    sampling: SamplingSettings
    reference: ReferenceEntry
    evaluation: EvaluationEntry
    metrics: dict[str, Expectation]
    description: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_groups(self) -> tuple[str, ...]:
        """The evaluate metrics ('fid', 'pr', ...) that produce this baseline's metrics."""
        return tuple(dict.fromkeys(METRIC_GROUPS[name] for name in self.metrics))


# ---------------------------------------------------------------------------------------------
# Reading baseline files


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class _Reader:
    """Typed access to a TOML table that names the file and the key path in every error."""

    def __init__(self, path: Path, table: Mapping[str, Any], where: str, lenient: bool) -> None:
        self.path, self.table, self.where, self.lenient = path, table, where, lenient

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def reject_unknown(self, allowed: tuple[str, ...]) -> None:
        unknown = [name for name in self.table if name not in allowed]
        if unknown:
            raise EvalsuiteError(
                f"{self.path}: unknown key `{self.key(unknown[0])}`; expected one of "
                f"{', '.join(allowed)} (a typo? baselines reject keys they do not understand)"
            )

    def missing(self, name: str) -> EvalsuiteError:
        return EvalsuiteError(
            f"{self.path}: missing key `{self.key(name)}`; the baseline must fix every part of "
            f"the protocol (add it, or refill the file with `evalsuite regress --update {self.path}`)"
        )

    def get(self, name: str, kind: type, default: Any = dataclasses.MISSING) -> Any:
        """The value of `name` as `kind`; `default` is used when absent and the read is lenient."""
        if name not in self.table:
            if default is not dataclasses.MISSING and self.lenient:
                return default
            raise self.missing(name)
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise EvalsuiteError(
                f"{self.path}: `{self.key(name)}` is {value!r}; expected {_KIND_NAMES[kind]}"
            )
        if kind is float and not math.isfinite(value):
            raise EvalsuiteError(
                f"{self.path}: `{self.key(name)}` is {value}; expected a finite number"
            )
        return value

    def optional(self, name: str, kind: type) -> Any:
        return self.get(name, kind) if name in self.table else None

    def sub(self, name: str, *, required: bool = True) -> _Reader | None:
        if name not in self.table:
            if required:
                raise self.missing(name)
            return None
        value = self.table[name]
        if not isinstance(value, dict):
            raise EvalsuiteError(f"{self.path}: `{self.key(name)}` must be a table [{name}]")
        return _Reader(self.path, value, self.key(name), self.lenient)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise EvalsuiteError(
                "reading TOML baselines needs Python >= 3.11 (tomllib) or `pip install tomli`"
            ) from None
    if not path.is_file():
        raise EvalsuiteError(
            f"baseline {path} does not exist; create one with `evalsuite regress --init {path} ...`"
        )
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise EvalsuiteError(f"{path}: not valid TOML ({error})") from None


def _read_checkpoint(reader: _Reader, lenient_hash: bool) -> CheckpointEntry:
    reader.reject_unknown(("path", "sha256", "architecture"))
    architecture = reader.get("architecture", str)
    if architecture != EMBEDDED and not architecture.startswith((PRESET_PREFIX, FLAGS_PREFIX)):
        raise EvalsuiteError(
            f"{reader.path}: `{reader.key('architecture')}` is {architecture!r}; expected "
            f'"embedded", "preset:NAME" or "flags:--image_size ..."'
        )
    return CheckpointEntry(
        path=reader.get("path", str),
        sha256=reader.optional("sha256", str) if lenient_hash else reader.get("sha256", str),
        architecture=architecture,
    )


def _read_tolerance(reader: _Reader) -> Tolerance:
    kinds = [kind for kind in TOLERANCE_KINDS if kind in reader.table]
    if len(kinds) != 1:
        raise EvalsuiteError(
            f"{reader.path}: [{reader.where}] needs exactly one tolerance of abs = X, rel = X or "
            f"ci = LEVEL, found {', '.join(kinds) or 'none'}"
        )
    kind = kinds[0]
    amount = reader.get(kind, float)
    if kind in ("abs", "rel") and amount < 0:
        raise EvalsuiteError(f"{reader.path}: `{reader.key(kind)}` is {amount}; expected >= 0")
    if kind == "ci" and not 0.5 <= amount < 1:
        raise EvalsuiteError(
            f"{reader.path}: `{reader.key(kind)}` is {amount}; expected a confidence level in "
            "[0.5, 1), e.g. 0.95"
        )
    return Tolerance(kind, amount)


def load_baseline(path: str | os.PathLike[str], *, for_update: bool = False) -> Baseline:
    """Parse and validate a baseline file; raises `EvalsuiteError` naming the offending key.

    With `for_update`, hashes, expected values and bounds may be absent (update fills them),
    as may keys that have defaults (a newer evalsuite's settings take their default values).
    """
    path = Path(path)
    data = _read_toml(path)
    top = _Reader(path, data, "", for_update)
    top.reject_unknown(
        (
            "format",
            "version",
            "description",
            "model",
            "classifier",
            "sampling",
            "reference",
            "evaluation",
            "metrics",
            "provenance",
        )
    )
    if top.get("format", str) != BASELINE_FORMAT:
        raise EvalsuiteError(
            f"{path}: `format` is {data['format']!r}; expected {BASELINE_FORMAT!r}"
        )
    if top.get("version", int) != BASELINE_VERSION:
        raise EvalsuiteError(
            f"{path}: baseline version {data['version']}; this evalsuite reads version "
            f"{BASELINE_VERSION}"
        )
    model = _read_checkpoint(top.sub("model"), for_update)
    classifier_reader = top.sub("classifier", required=False)
    classifier = (
        None if classifier_reader is None else _read_checkpoint(classifier_reader, for_update)
    )

    sampling_reader = top.sub("sampling")
    sampling_fields = dataclasses.fields(SamplingSettings)
    sampling_reader.reject_unknown(tuple(f.name for f in sampling_fields))
    sampling = SamplingSettings(
        **{
            f.name: sampling_reader.get(f.name, _FIELD_TYPES[f.type], f.default)
            for f in sampling_fields
        }
    )
    try:
        sampling.validate()
    except EvalsuiteError as error:
        raise EvalsuiteError(f"{path}: [sampling]: {error}") from None

    reference_reader = top.sub("reference")
    reference_reader.reject_unknown(("path", "sha256", "ref_stats"))
    reference = ReferenceEntry(
        path=reference_reader.get("path", str),
        sha256=(reference_reader.optional if for_update else reference_reader.get)("sha256", str),
        ref_stats=reference_reader.get("ref_stats", str),
    )
    if reference.ref_stats not in REF_STATS_CHOICES:
        raise EvalsuiteError(
            f"{path}: `reference.ref_stats` is {reference.ref_stats!r}; expected one of "
            f"{', '.join(REF_STATS_CHOICES)}"
        )

    evaluation_reader = top.sub("evaluation")
    evaluation_fields = dataclasses.fields(EvaluationEntry)
    evaluation_reader.reject_unknown(tuple(f.name for f in evaluation_fields))
    evaluation_values = {}
    for f in evaluation_fields:
        kind = _FIELD_TYPES[f.type]
        if f.name == "inception_weights_sha256":
            getter = evaluation_reader.optional if for_update else evaluation_reader.get
            evaluation_values[f.name] = getter(f.name, kind)
        else:
            evaluation_values[f.name] = evaluation_reader.get(f.name, kind, f.default)
    evaluation = EvaluationEntry(**evaluation_values)
    _check_evaluation(path, evaluation)

    metrics_reader = top.sub("metrics")
    metrics_reader.reject_unknown(tuple(METRIC_GROUPS))
    if not metrics_reader.table:
        raise EvalsuiteError(
            f"{path}: [metrics] is empty; add e.g. [metrics.fid] with expected and a tolerance"
        )
    metrics: dict[str, Expectation] = {}
    for name in metrics_reader.table:
        reader = metrics_reader.sub(name)
        reader.reject_unknown(("expected", "bound", "note", *TOLERANCE_KINDS))
        tolerance = _read_tolerance(reader)
        expected = (
            reader.optional("expected", float) if for_update else reader.get("expected", float)
        )
        bound = reader.optional("bound", float)
        if tolerance.kind == "ci" and bound is None and not for_update:
            raise EvalsuiteError(
                f"{path}: [metrics.{name}] has a ci tolerance but no `bound`; compute it with "
                f"`evalsuite regress --update {path}`"
            )
        if tolerance.kind != "ci" and bound is not None:
            raise EvalsuiteError(
                f"{path}: [metrics.{name}] has a `bound` but a {tolerance.kind} tolerance; "
                "bounds belong to ci tolerances (remove it)"
            )
        metrics[name] = Expectation(expected, tolerance, bound, reader.optional("note", str))

    provenance_reader = top.sub("provenance", required=False)
    return Baseline(
        path=path,
        model=model,
        classifier=classifier,
        sampling=sampling,
        reference=reference,
        evaluation=evaluation,
        metrics=metrics,
        description=top.optional("description", str),
        provenance={} if provenance_reader is None else dict(provenance_reader.table),
    )


# Python types of the (string) annotations of SamplingSettings and EvaluationEntry fields.
_FIELD_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "str | None": str,
}


def _check_evaluation(path: Path, evaluation: EvaluationEntry) -> None:
    from evalsuite.metrics.fid import FRECHET_METHODS

    checks = (
        ("pr_k", evaluation.pr_k >= 1, "an integer >= 1"),
        ("is_split_size", evaluation.is_split_size >= 1, "an integer >= 1"),
        ("kid_subsets", evaluation.kid_subsets >= 1, "an integer >= 1"),
        ("kid_subset_size", evaluation.kid_subset_size >= 2, "an integer >= 2"),
        ("fid_method", evaluation.fid_method in FRECHET_METHODS, " or ".join(FRECHET_METHODS)),
        ("bootstrap_resamples", evaluation.bootstrap_resamples >= 0, "an integer >= 0"),
    )
    for name, ok, expected in checks:
        if not ok:
            raise EvalsuiteError(
                f"{path}: `evaluation.{name}` is {getattr(evaluation, name)!r}; expected {expected}"
            )


# ---------------------------------------------------------------------------------------------
# Writing baseline files (tomllib reads TOML but cannot write it)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EvalsuiteError(f"cannot record the non-finite value {value} in a baseline")
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes (\" \\ \n \uXXXX) are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_table(name: str, table: Mapping[str, Any], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping) and v is not None}
    if name and scalars:
        lines.append("")
        lines.append(f"[{name}]")
    lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
    for key, value in table.items():
        if isinstance(value, Mapping):
            _toml_table(f"{name}.{key}" if name else key, value, lines)


BASELINE_HEADER = """\
# evalsuite regression baseline. Check:  evalsuite regress {name}
# After an intended change, rewrite expected values and hashes (tolerances are kept):
#   evalsuite regress --update {name}
# Paths: "zoo:NAME" = the embedded zoo, other relative paths start at this file's folder.
# Tolerance per metric (worse = higher FID/sFID/KID, lower IS/precision/recall):
#   abs = X   worse by at most X;   rel = X   worse by at most X * |expected|;
#   ci = C    not worse than `bound`, the baseline's one-sided bootstrap bound at confidence C.
"""


def baseline_to_dict(baseline: Baseline) -> dict[str, Any]:
    """The baseline as plain data in file order (None values are left out)."""

    def checkpoint(entry: CheckpointEntry) -> dict[str, Any]:
        return {"path": entry.path, "sha256": entry.sha256, "architecture": entry.architecture}

    metrics = {}
    for name, expectation in baseline.metrics.items():
        metrics[name] = {
            "expected": expectation.expected,
            expectation.tolerance.kind: expectation.tolerance.amount,
            "bound": expectation.bound,
            "note": expectation.note,
        }
    data: dict[str, Any] = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "description": baseline.description,
        "model": checkpoint(baseline.model),
    }
    if baseline.classifier is not None:
        data["classifier"] = checkpoint(baseline.classifier)
    data["sampling"] = dataclasses.asdict(baseline.sampling)
    data["reference"] = dataclasses.asdict(baseline.reference)
    data["evaluation"] = dataclasses.asdict(baseline.evaluation)
    data["metrics"] = metrics
    if baseline.provenance:
        data["provenance"] = baseline.provenance
    return data


def baseline_to_toml(baseline: Baseline) -> str:
    """The baseline file's text: a comment header, then the tables of `baseline_to_dict`."""
    lines = [BASELINE_HEADER.format(name=baseline.path.name).rstrip("\n")]
    _toml_table("", baseline_to_dict(baseline), lines)
    return "\n".join(lines) + "\n"


def write_baseline(baseline: Baseline) -> Path:
    """Write `baseline` to `baseline.path` atomically (temp file + os.replace)."""
    text = baseline_to_toml(baseline)
    with atomic_path(baseline.path) as tmp:
        tmp.write_text(text)
    return baseline.path


# ---------------------------------------------------------------------------------------------
# Resolving and checking the protocol (all before any sampling)


def resolve_path(entry: str, baseline_path: Path) -> Path:
    """'zoo:NAME' -> the zoo file (manifest-checked); a relative path -> from the baseline's folder."""
    if entry.startswith(ZOO_PREFIX):
        name = entry[len(ZOO_PREFIX) :]
        return zoo.reference() if name == zoo.REFERENCE else zoo.asset(name)
    path = Path(entry).expanduser()
    return path if path.is_absolute() else baseline_path.parent / path


def path_entry(path: str, baseline_path: Path) -> str:
    """How a user-given path is recorded: 'zoo:NAME' as is, others relative to the baseline."""
    if path.startswith(ZOO_PREFIX):
        return path
    absolute = Path(path).expanduser().resolve()
    try:
        return Path(os.path.relpath(absolute, baseline_path.parent.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return str(absolute)


def _hash_mismatch(baseline: Baseline, what: str, path: Path, found: str, recorded: str) -> str:
    return (
        f"{baseline.path}: the protocol in the baseline no longer matches the {what}'s hash: "
        f"{path} has sha256 {found[:12]}… but the baseline records {recorded[:12]}…; not "
        f"comparing metrics of a different {what}. If the change is intended, record it with "
        f"`evalsuite regress --update {baseline.path}`"
    )


@dataclass
class Protocol:
    """A baseline's protocol, resolved and checked: models loaded, reference opened, weights."""

    baseline: Baseline
    models: SamplingModels
    reference: Reference
    ref_stats_mode: str
    weights: Any
    extractor: torch.nn.Module
    hashes: dict[str, str]


def _checked_file(baseline: Baseline, entry: str, key: str, what: str) -> Path:
    path = resolve_path(entry, baseline.path)
    if not path.exists():
        raise EvalsuiteError(
            f"{baseline.path}: {what} {path} (`{key}` = {entry!r}) does not exist; restore it or "
            "fix the path (relative paths start at the baseline's folder)"
        )
    return path


def prepare(
    baseline: Baseline,
    *,
    verify: bool = True,
    inception_weights: str | None = None,
    device: str = "cpu",
) -> Protocol:
    """Resolve files, check hashes (`verify`) and load everything a run needs, before sampling.

    With verify=False (update/init) the current hashes are recorded instead of compared; the
    reference statistics must still have been computed with the Inception weights in use.
    """
    from evalsuite.models.checkpoint import load_checkpoint

    hashes: dict[str, str] = {}
    entries = [("model", baseline.model)]
    if baseline.classifier is not None:
        entries.append(("classifier", baseline.classifier))
    paths: dict[str, Path] = {}
    for role, entry in entries:
        paths[role] = _checked_file(baseline, entry.path, f"{role}.path", f"{role} checkpoint")
        hashes[role] = sha256_file(paths[role])
        if verify and hashes[role] != entry.sha256:
            raise EvalsuiteError(
                _hash_mismatch(
                    baseline, f"{role} checkpoint", paths[role], hashes[role], entry.sha256
                )
            )
    reference_path = _checked_file(baseline, baseline.reference.path, "reference.path", "reference")
    hashes["reference"] = (
        sha256_file(reference_path) if reference_path.is_file() else _folder_hash(reference_path)
    )
    if verify and hashes["reference"] != baseline.reference.sha256:
        raise EvalsuiteError(
            _hash_mismatch(
                baseline,
                "reference",
                reference_path,
                hashes["reference"],
                baseline.reference.sha256,
            )
        )
    reference = load_reference(reference_path)
    reference_weights = (reference.meta or {}).get("weights_sha256")
    recorded_weights = baseline.evaluation.inception_weights_sha256
    if verify and reference_weights is not None and reference_weights != recorded_weights:
        raise EvalsuiteError(
            f"{baseline.path}: reference statistics {reference_path} were computed with Inception "
            f"weights {reference_weights[:12]}… but the baseline records {recorded_weights[:12]}…; "
            "use statistics made with the baseline's weights (`evalsuite ref-stats`)"
        )
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

    loaded = {}
    for role, entry in entries:
        kind = "unet" if role == "model" else "classifier"
        loaded[role] = load_checkpoint(paths[role], kind, **entry.load_arguments())
    models = SamplingModels(model=loaded["model"], classifier=loaded.get("classifier"))
    models.check(baseline.sampling)
    options = baseline.evaluation.metric_options()
    mode = check_reference(reference, baseline.metric_groups, baseline.reference.ref_stats, options)
    if "pr" in baseline.metric_groups:
        check_pr_size("samples", baseline.sampling.num_samples, options)
    if "kid" in baseline.metric_groups and baseline.sampling.num_samples < 2:
        raise EvalsuiteError(f"{baseline.path}: KID needs at least 2 samples")
    return Protocol(baseline, models, reference, mode, weights, extractor, hashes)


def _folder_hash(folder: Path) -> str:
    from evalsuite.pipeline.batches import open_images

    return open_images(folder, role="reference").fingerprint()


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


def measure(
    protocol: Protocol,
    *,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    keep_samples: str | os.PathLike[str] | None = None,
) -> Measurement:
    """Generate the protocol's samples (in a temporary folder, removed afterwards) and score them."""
    baseline = protocol.baseline
    options = baseline.evaluation.metric_options()
    if keep_samples is not None and Path(keep_samples).exists():
        raise EvalsuiteError(f"--keep-samples {keep_samples} exists; choose a new file name")
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="evalsuite-regress-") as folder:
        out = Path(keep_samples) if keep_samples is not None else Path(folder) / "samples.npz"
        started = time.perf_counter()
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
        from evalsuite.pipeline.batches import open_images

        sample_computer = FeatureComputer(
            protocol.extractor,
            protocol.weights.sha256,
            protocol.weights.has_logits,
            device=device,
            batch_size=FEATURE_BATCH_SIZE,
            progress=progress,
            use_cache=False,
        )
        sample_features = sample_computer.compute(
            open_images(out, role="samples"), desc="sample features"
        )
        digest = samples_digest(out)
    reference_computer = make_computer(
        protocol.weights,
        protocol.extractor,
        device=device,
        batch_size=FEATURE_BATCH_SIZE,
        progress=progress,
    )
    reference_side = resolve_reference(
        protocol.reference, baseline.metric_groups, protocol.ref_stats_mode, reference_computer
    )
    values = score_features(
        sample_features, reference_side, baseline.metric_groups, options, device
    )
    seconds["evaluation"] = time.perf_counter() - started
    measured = {name: values[name] for name in baseline.metrics}
    for name, value in measured.items():
        if value is None:
            raise EvalsuiteError(f"{baseline.path}: metric {name} could not be computed")
    return Measurement(measured, sample_features, reference_side, digest, seconds)


# ---------------------------------------------------------------------------------------------
# Bootstrap


class KIDResampler:
    """KID of row-resampled sample features, equal to `kernel_inception_distance` on them.

    The subsets are drawn exactly as `kernel_inception_distance` draws them (per subset: m
    reference indices, then m sample positions, from `default_rng(kid_seed)`); they do not depend
    on the features, only on the set sizes, which resampling keeps. Per subset the reference term
    and each sample's kernel sum against the subset's reference points are computed once; a
    replicate then needs only counts of the resampled rows: with w the counts of subset rows,
    sum_{p != q} k(y_p, y_q) = w^T K w - w . diag(K) (Bińkowski et al. 2018, eq. 2).
    """

    def __init__(self, reference: np.ndarray, sample: np.ndarray, options: MetricOptions) -> None:
        """reference: (R, D), sample: (N, D) float pool features; options: the KID settings."""
        self.reference = np.asarray(reference, dtype=np.float64)
        self.sample = np.asarray(sample, dtype=np.float64)
        num_reference, num_samples = len(self.reference), len(self.sample)
        self.gamma = 1.0 / self.sample.shape[1]
        self.size = min(options.kid_subset_size, num_reference, num_samples)
        rng = np.random.default_rng(options.kid_seed)
        self.positions = np.empty((options.kid_subsets, self.size), dtype=np.int64)
        self.within_reference = np.empty(options.kid_subsets)
        self.cross_sums = np.empty((options.kid_subsets, num_samples))
        pair_count = self.size * (self.size - 1)
        for index in range(options.kid_subsets):
            subset = self.reference[rng.choice(num_reference, self.size, replace=False)]
            self.positions[index] = rng.choice(num_samples, self.size, replace=False)
            kernel = self._kernel(subset, subset)
            self.within_reference[index] = (kernel.sum() - np.trace(kernel)) / pair_count
            self.cross_sums[index] = self._kernel(self.sample, subset).sum(axis=1)
        self.sample_kernel = self._kernel(self.sample, self.sample)

    def _kernel(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # kernel_inception_distance's default polynomial kernel: (x.y / D + 1)^3.
        return (self.gamma * (x @ y.T) + 1.0) ** 3

    def __call__(self, rows: np.ndarray) -> float:
        """KID of sample[rows]; rows: (N,) int indices with repeats (a bootstrap resample)."""
        num_samples = len(self.sample)
        counts = np.zeros((len(self.positions), num_samples))
        for index, positions in enumerate(self.positions):
            counts[index] = np.bincount(rows[positions], minlength=num_samples)
        pair_count = self.size * (self.size - 1)
        all_pairs = np.einsum("sn,nm,sm->s", counts, self.sample_kernel, counts)
        within_sample = (all_pairs - counts @ np.diag(self.sample_kernel)) / pair_count
        cross = (counts * self.cross_sums).sum(axis=1) / (self.size * self.size)
        return float(np.mean(self.within_reference + within_sample - 2.0 * cross))


def bootstrap_replicates(
    sample: FeatureSet,
    reference: ReferenceSide,
    metrics: tuple[str, ...],
    rows: np.ndarray,
    options: MetricOptions = MetricOptions(),
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Each metric (baseline names) on each resample of the sample rows; (B,) float64 arrays.

    rows: (B, N) int indices into the sample features. KID comes from `KIDResampler`, the other
    metrics from `bootstrap.SampleScorer` (Gram-route FID/sFID, stored P/R distances); both
    equal `score_features` on the resampled features.
    """
    from evalsuite.experiments.bootstrap import SampleScorer, prepare_reference

    replicates = {name: np.empty(len(rows)) for name in metrics}
    kid = KIDResampler(reference.pool, sample.pool, options) if "kid" in metrics else None
    others = [name for name in metrics if name != "kid"]
    scorer = None
    if others:
        groups = tuple(dict.fromkeys(METRIC_GROUPS[name] for name in others))
        prepared = prepare_reference(reference, groups, options, device)
        scorer = SampleScorer(sample, prepared, device=device)
    for index, resample in enumerate(rows):
        if kid is not None:
            replicates["kid"][index] = kid(resample)
        if scorer is not None:
            values = scorer.scores(resample)
            for name in others:
                if values[name] is None:
                    raise EvalsuiteError(
                        f"no bootstrap replicates of {name} at N={len(sample)}; use an abs or "
                        "rel tolerance for it"
                    )
                replicates[name][index] = values[name]
    return replicates


def bootstrap_bound(value: float, replicates: np.ndarray, confidence: float, metric: str) -> float:
    """The one-sided bound on the worse side of `value` at `confidence`.

    Centred percentile bootstrap: value + the `confidence` quantile (lower-is-better metrics; the
    1 - confidence quantile otherwise) of replicates - mean(replicates). Centring removes the
    resampling bias (duplicated rows shrink the sample's spread, which inflates FID replicates)
    and keeps the spread. Never tighter than `value` itself, so a baseline passes against itself.
    """
    centred = replicates - replicates.mean()
    if metric in LOWER_IS_BETTER:
        return max(value, value + float(np.quantile(centred, confidence)))
    return min(value, value + float(np.quantile(centred, 1.0 - confidence)))


def bootstrap_bounds(
    baseline: Baseline, measurement: Measurement, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Bounds of the baseline's ci-tolerance metrics from `bootstrap_resamples` resamples."""
    wanted = [name for name, e in baseline.metrics.items() if e.tolerance.kind == "ci"]
    if not wanted:
        return {}
    evaluation = baseline.evaluation
    count = len(measurement.sample_features)
    rng = np.random.default_rng(evaluation.bootstrap_seed)
    rows = rng.integers(0, count, size=(evaluation.bootstrap_resamples, count))
    replicates = bootstrap_replicates(
        measurement.sample_features,
        measurement.reference_side,
        tuple(wanted),
        rows,
        evaluation.metric_options(),
        device,
    )
    return {
        name: bootstrap_bound(
            measurement.values[name],
            replicates[name],
            baseline.metrics[name].tolerance.amount,
            name,
        )
        for name in wanted
    }


# ---------------------------------------------------------------------------------------------
# Comparing


@dataclass(frozen=True)
class Comparison:
    """One metric's verdict: PASS, FAIL (worse than `allowed`) or BETTER (improved by more than
    the tolerance; passes, and suggests --update)."""

    metric: str
    expected: float | None
    got: float
    tolerance: Tolerance
    allowed: float | None
    status: str

    @property
    def delta(self) -> float | None:
        return None if self.expected is None else self.got - self.expected

    @property
    def direction(self) -> str:
        return "lower" if self.metric in LOWER_IS_BETTER else "higher"


def allowed_value(metric: str, expectation: Expectation) -> float:
    """The worst value that still passes (lower-is-better metrics: the largest)."""
    expected, tolerance = expectation.expected, expectation.tolerance
    if tolerance.kind == "ci":
        return expectation.bound
    margin = tolerance.amount if tolerance.kind == "abs" else tolerance.amount * abs(expected)
    return expected + margin if metric in LOWER_IS_BETTER else expected - margin


def compare(metric: str, expectation: Expectation, got: float) -> Comparison:
    """Compare a measured value with the baseline's expectation for `metric`.

    Without an expected value (or a ci bound), as in a baseline that --update is about to fill,
    there is nothing to compare: the status is PASS and `allowed` is None.
    """
    unfilled = expectation.tolerance.kind == "ci" and expectation.bound is None
    if expectation.expected is None or unfilled:
        return Comparison(metric, None, got, expectation.tolerance, None, STATUS_PASS)
    allowed = allowed_value(metric, expectation)
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    worse_by = sign * (got - expectation.expected)
    margin = sign * (allowed - expectation.expected)
    if not math.isfinite(got) or worse_by > margin:
        status = STATUS_FAIL
    elif -worse_by > margin:
        status = STATUS_BETTER
    else:
        status = STATUS_PASS
    return Comparison(metric, expectation.expected, got, expectation.tolerance, allowed, status)


@dataclass
class RegressResult:
    """The outcome of a check (or of an update/init: comparisons against the old values)."""

    baseline: Baseline
    comparisons: list[Comparison]
    samples_sha256: str
    environment: dict[str, Any]
    seconds: dict[str, float]
    action: str = "check"

    @property
    def passed(self) -> bool:
        return all(c.status != STATUS_FAIL for c in self.comparisons)

    @property
    def samples_identical(self) -> bool | None:
        """Whether the samples are bitwise those of the baseline's run (None: not recorded)."""
        recorded = self.baseline.provenance.get("samples_sha256")
        return None if recorded is None else recorded == self.samples_sha256

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": str(self.baseline.path),
            "action": self.action,
            "passed": self.passed,
            "metrics": {
                c.metric: {
                    "expected": c.expected,
                    "got": c.got,
                    "delta": c.delta,
                    "tolerance": {"kind": c.tolerance.kind, "amount": c.tolerance.amount},
                    "allowed": c.allowed,
                    "direction": c.direction,
                    "status": c.status,
                }
                for c in self.comparisons
            },
            "samples_sha256": self.samples_sha256,
            "samples_identical_to_baseline": self.samples_identical,
            "protocol": baseline_to_dict(self.baseline),
            "environment": self.environment,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


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


def _compare_all(baseline: Baseline, measurement: Measurement) -> list[Comparison]:
    return [
        compare(name, expectation, measurement.values[name])
        for name, expectation in baseline.metrics.items()
    ]


def check(
    baseline_path: str | os.PathLike[str],
    *,
    inception_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    keep_samples: str | os.PathLike[str] | None = None,
) -> RegressResult:
    """Run the baseline's protocol and compare with its expected values (raises on bad input)."""
    baseline = load_baseline(baseline_path)
    protocol = prepare(baseline, inception_weights=inception_weights, device=device)
    measurement = measure(
        protocol, device=device, batch_size=batch_size, progress=progress, keep_samples=keep_samples
    )
    return RegressResult(
        baseline,
        _compare_all(baseline, measurement),
        measurement.samples_sha256,
        environment(device),
        measurement.seconds,
    )


def _refill(
    baseline: Baseline,
    *,
    inception_weights: str | None,
    device: str,
    batch_size: int,
    progress: bool,
    keep_samples: str | os.PathLike[str] | None,
    action: str,
) -> tuple[Baseline, RegressResult]:
    """Measure, bootstrap and write `baseline` with new hashes, values and bounds."""
    resamples = baseline.evaluation.bootstrap_resamples
    if resamples < 2 and any(e.tolerance.kind == "ci" for e in baseline.metrics.values()):
        raise EvalsuiteError(
            f"{baseline.path}: ci tolerances need `evaluation.bootstrap_resamples` >= 2 "
            f"(got {resamples}); 200 is a good value"
        )
    protocol = prepare(baseline, verify=False, inception_weights=inception_weights, device=device)
    measurement = measure(
        protocol, device=device, batch_size=batch_size, progress=progress, keep_samples=keep_samples
    )
    started = time.perf_counter()
    bounds = bootstrap_bounds(baseline, measurement, device)
    measurement.seconds["bootstrap"] = time.perf_counter() - started
    env = environment(device)
    hashes = protocol.hashes
    updated = dataclasses.replace(
        baseline,
        model=dataclasses.replace(baseline.model, sha256=hashes["model"]),
        classifier=None
        if baseline.classifier is None
        else dataclasses.replace(baseline.classifier, sha256=hashes["classifier"]),
        reference=dataclasses.replace(baseline.reference, sha256=hashes["reference"]),
        evaluation=dataclasses.replace(
            baseline.evaluation, inception_weights_sha256=hashes["inception_weights"]
        ),
        metrics={
            name: dataclasses.replace(
                expectation, expected=measurement.values[name], bound=bounds.get(name)
            )
            for name, expectation in baseline.metrics.items()
        },
        provenance={
            "samples_sha256": measurement.samples_sha256,
            "device": env["device"],
            "torch_threads": env["torch_threads"],
            "machine": env["machine"],
            "versions": env["versions"],
        },
    )
    write_baseline(updated)
    # Old expected values against the new run, with the new tolerance bounds.
    comparisons = [
        dataclasses.replace(
            comparison,
            allowed=allowed_value(comparison.metric, updated.metrics[comparison.metric]),
            status=STATUS_RECORDED,
        )
        for comparison in _compare_all(baseline, measurement)
    ]
    result = RegressResult(
        updated,
        comparisons,
        measurement.samples_sha256,
        env,
        measurement.seconds,
        action=action,
    )
    return updated, result


def update(
    baseline_path: str | os.PathLike[str],
    *,
    inception_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    keep_samples: str | os.PathLike[str] | None = None,
) -> tuple[Baseline, RegressResult]:
    """Rewrite a baseline's expected values, ci bounds and hashes from a fresh run (atomically).

    Tolerances, notes and the protocol's settings are kept. Returns the new baseline and the
    comparison of the fresh run against the old expected values.
    """
    baseline = load_baseline(baseline_path, for_update=True)
    return _refill(
        baseline,
        inception_weights=inception_weights,
        device=device,
        batch_size=batch_size,
        progress=progress,
        keep_samples=keep_samples,
        action="update",
    )


DEFAULT_TOLERANCES = {
    "fid": Tolerance("rel", 0.05),
    "sfid": Tolerance("rel", 0.05),
    "inception_score": Tolerance("rel", 0.05),
    "precision": Tolerance("abs", 0.05),
    "recall": Tolerance("abs", 0.05),
    "kid": Tolerance("ci", 0.95),
}


def parse_tolerances(specs: list[str] | tuple[str, ...]) -> dict[str, Tolerance]:
    """'fid=rel:0.05', 'kid=ci:0.95,precision=abs:0.03' -> {metric: Tolerance} ('is' = IS)."""
    tolerances: dict[str, Tolerance] = {}
    for spec in specs:
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            try:
                name, rest = item.split("=", 1)
                kind, amount_text = rest.split(":", 1)
                amount = float(amount_text)
            except ValueError:
                raise EvalsuiteError(
                    f"--tolerance {item!r}: expected METRIC=KIND:AMOUNT, e.g. fid=rel:0.05, "
                    "precision=abs:0.03 or kid=ci:0.95"
                ) from None
            name = "inception_score" if name.strip() == "is" else name.strip()
            if name not in METRIC_GROUPS:
                raise EvalsuiteError(
                    f"--tolerance {item!r}: unknown metric {name!r}; expected one of "
                    f"{', '.join(METRIC_GROUPS)}"
                )
            if kind not in TOLERANCE_KINDS:
                raise EvalsuiteError(
                    f"--tolerance {item!r}: unknown kind {kind!r}; expected abs, rel or ci"
                )
            tolerances[name] = Tolerance(kind, amount)
    return tolerances


def init(
    baseline_path: str | os.PathLike[str],
    *,
    model: str,
    model_architecture: str = EMBEDDED,
    classifier: str | None = None,
    classifier_architecture: str = EMBEDDED,
    reference: str,
    ref_stats: str = "auto",
    sampling: SamplingSettings,
    metrics: tuple[str, ...],
    tolerances: dict[str, Tolerance] | None = None,
    evaluation: EvaluationEntry | None = None,
    description: str | None = None,
    inception_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    keep_samples: str | os.PathLike[str] | None = None,
) -> tuple[Baseline, RegressResult]:
    """Write a new baseline at `baseline_path` from a run of the given protocol.

    model/classifier/reference: "zoo:NAME" or paths (recorded relative to the baseline's folder).
    metrics: evaluate metric names (fid, sfid, is, pr, kid); tolerances override
    `DEFAULT_TOLERANCES` per baseline metric name.
    """
    path = Path(baseline_path)
    if path.exists():
        raise EvalsuiteError(
            f"{path} exists; refresh it with `evalsuite regress --update {path}` or choose "
            "another file name"
        )
    if path.suffix != ".toml":
        raise EvalsuiteError(f"{path}: a baseline is a TOML file; use a name ending in .toml")
    names = [name for name, group in METRIC_GROUPS.items() if group in metrics]
    tolerances = tolerances or {}
    extra = [name for name in tolerances if name not in names]
    if extra:
        raise EvalsuiteError(
            f"--tolerance {extra[0]} is given but {METRIC_GROUPS[extra[0]]} is not in --metrics"
        )
    draft = Baseline(
        path=path,
        model=CheckpointEntry(path_entry(model, path), None, model_architecture),
        classifier=None
        if classifier is None
        else CheckpointEntry(path_entry(classifier, path), None, classifier_architecture),
        sampling=sampling,
        reference=ReferenceEntry(path_entry(reference, path), None, ref_stats),
        evaluation=evaluation or EvaluationEntry(inception_weights_sha256=None),
        metrics={
            name: Expectation(None, tolerances.get(name, DEFAULT_TOLERANCES[name]))
            for name in names
        },
        description=description,
    )
    # Validate the draft like a file before running anything (ranges of tolerances, options).
    for name, expectation in draft.metrics.items():
        reader = _Reader(
            path,
            {expectation.tolerance.kind: expectation.tolerance.amount},
            f"metrics.{name}",
            False,
        )
        _read_tolerance(reader)
    _check_evaluation(path, draft.evaluation)
    sampling.validate()
    return _refill(
        draft,
        inception_weights=inception_weights,
        device=device,
        batch_size=batch_size,
        progress=progress,
        keep_samples=keep_samples,
        action="init",
    )


# ---------------------------------------------------------------------------------------------
# Reports


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _delta(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4g}"


def _tolerance_text(comparison: Comparison) -> str:
    if comparison.allowed is None:
        return comparison.tolerance.describe()
    relation = "<=" if comparison.direction == "lower" else ">="
    return f"{comparison.tolerance.describe()} ({relation} {comparison.allowed:.6g})"


def table_rows(result: RegressResult) -> list[tuple[str, ...]]:
    """Header and one row per metric: metric, expected, got, delta, tolerance, status."""
    rows = [("metric", "expected", "got", "delta", "tolerance", "status")]
    for c in result.comparisons:
        rows.append(
            (
                c.metric,
                _number(c.expected),
                _number(c.got),
                _delta(c.delta),
                _tolerance_text(c),
                c.status,
            )
        )
    return rows


def _summary(result: RegressResult) -> list[str]:
    lines = []
    if result.action == "check":
        failed = [c.metric for c in result.comparisons if c.status == STATUS_FAIL]
        better = [c.metric for c in result.comparisons if c.status == STATUS_BETTER]
        if failed:
            lines.append(f"REGRESSION in {', '.join(failed)}")
        else:
            lines.append("PASS: no metric is worse than its tolerance allows")
        if better:
            lines.append(
                f"{', '.join(better)} improved beyond the tolerance; if intended, record it with "
                f"`evalsuite regress --update {result.baseline.path}`"
            )
    else:
        lines.append(f"wrote {result.baseline.path} (expected values, bounds and hashes)")
    identical = result.samples_identical if result.action == "check" else None
    if identical is True:
        lines.append("samples: bitwise identical to the baseline's run")
    elif identical is False:
        lines.append(
            "samples: differ from the baseline's run in some bits (another machine, thread "
            "count, library version or device; see baselines/README.md)"
        )
    return lines


def format_table(result: RegressResult) -> list[str]:
    """The human report: aligned table, then a verdict and notes."""
    rows = table_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    baseline = result.baseline
    lines.append(
        f"N={baseline.sampling.num_samples} seed={baseline.sampling.seed} "
        f"sampler={baseline.sampling.sampler} steps={baseline.sampling.steps} "
        f"guidance={baseline.sampling.guidance_scale:g} device={result.environment['device']} "
        f"threads={result.environment['torch_threads']} "
        + " ".join(f"{k}={v:.1f}s" for k, v in result.seconds.items())
    )
    return lines + _summary(result)


def to_markdown(result: RegressResult) -> str:
    """A Markdown report for a CI job summary ($GITHUB_STEP_SUMMARY)."""
    if result.action == "check":
        verdict = "✅ PASS" if result.passed else "❌ REGRESSION"
    else:
        verdict = f"📝 {result.action}"
    lines = [f"### evalsuite regress: {verdict} (`{result.baseline.path}`)", ""]
    rows = table_rows(result)
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "---|" * len(rows[0]))
    marks = {STATUS_PASS: "✅ PASS", STATUS_FAIL: "❌ FAIL", STATUS_BETTER: "⬆️ BETTER"}
    for row in rows[1:]:
        cells = [f"`{cell}`" if i in (1, 2, 3) else cell for i, cell in enumerate(row)]
        cells[-1] = marks.get(row[-1], row[-1])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    baseline = result.baseline
    lines.append(
        f"N={baseline.sampling.num_samples}, seed {baseline.sampling.seed}, "
        f"{baseline.sampling.sampler} {baseline.sampling.steps!r} steps, guidance "
        f"{baseline.sampling.guidance_scale:g}; device {result.environment['device']}, "
        f"{result.environment['torch_threads']} threads."
    )
    lines.extend(f"{line}." if not line.endswith(".") else line for line in _summary(result))
    return "\n".join(lines) + "\n"


def write_json(path: str | os.PathLike[str], result: RegressResult) -> None:
    """Write `result.to_json()` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def append_markdown(path: str | os.PathLike[str], result: RegressResult) -> None:
    """Append the Markdown report to `path` (created if missing), as CI job summaries expect."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(to_markdown(result))
