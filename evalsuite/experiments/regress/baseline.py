"""The baseline file: a TOML file that fixes a regression check's protocol and expected values.

A baseline fixes the checkpoints (path, sha256, architecture), every sampling setting (N and seed
included), the reference (path, sha256, ref-stats choice), the Inception weights' sha256 and every
option that changes a metric value, plus, per metric, the expected value and a tolerance:

- `abs = x`: the metric may be worse than `expected` by at most x (metric units);
- `rel = r`: worse by at most r * |expected|;
- `ci = c`: not worse than `bound`, the baseline's one-sided bootstrap bound at confidence c.

Files are read with `tomllib` (`tomli` on Python 3.10) and validated strictly: an unknown key, a
missing key or a value of the wrong type raises `EvalsuiteError` naming the file and the key.
They are written with `tomli_w` below a comment header that says how to check and update them.

The [sampling] table holds exactly the fields of `pipeline.sample.SamplingSettings`. A field added
to `SamplingSettings` later becomes a baseline key by itself; list it in `ADDED_SAMPLING_KEYS` so
that files written before it existed still read, with the field's default.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalsuite import zoo
from evalsuite.pipeline.evaluate import REF_STATS_CHOICES, MetricOptions
from evalsuite.pipeline.sample import SamplingSettings
from evalsuite.runtime.cache import atomic_path
from evalsuite.runtime.errors import EvalsuiteError

BASELINE_FORMAT = "evalsuite-regress-baseline"
BASELINE_VERSION = 1
ZOO_PREFIX = "zoo:"
EMBEDDED = "embedded"
PRESET_PREFIX = "preset:"
FLAGS_PREFIX = "flags:"
# The architecture of a `diffusers:` model: the folder describes itself (path = the folder).
DIFFUSERS = "diffusers"
# [sampling] keys added to `SamplingSettings` after baseline version 1: optional in a file, where
# absence means the field's default (which must be the behaviour from before the key existed).
ADDED_SAMPLING_KEYS: tuple[str, ...] = ("guidance", "classifier_scale")

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
    "preset:NAME" or "flags:--image_size 64 ..." (bare guided-diffusion state dicts), or
    "diffusers" (path is a diffusers folder, sha256 its folder hash).
    """

    path: str
    sha256: str | None
    architecture: str = EMBEDDED

    def load_arguments(self) -> dict[str, str | None]:
        """The `flags`/`preset` arguments of `load_checkpoint` for this architecture."""
        if self.architecture in (EMBEDDED, DIFFUSERS):
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

    def get(
        self, name: str, kind: type, default: Any = dataclasses.MISSING, *, optional: bool = False
    ) -> Any:
        """The value of `name` as `kind`; `default` is used when absent and the read is lenient
        (or the key is `optional`)."""
        if name not in self.table:
            if default is not dataclasses.MISSING and (self.lenient or optional):
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
    if architecture not in (EMBEDDED, DIFFUSERS) and not architecture.startswith(
        (PRESET_PREFIX, FLAGS_PREFIX)
    ):
        raise EvalsuiteError(
            f"{reader.path}: `{reader.key('architecture')}` is {architecture!r}; expected "
            f'"embedded", "preset:NAME", "flags:--image_size ..." or "diffusers"'
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


def check_tolerance(path: Path, metric: str, tolerance: Tolerance) -> None:
    """Validate a tolerance given outside a file as if it were `[metrics.<metric>]` of `path`."""
    table = {tolerance.kind: tolerance.amount}
    _read_tolerance(_Reader(path, table, f"metrics.{metric}", False))


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
            f.name: sampling_reader.get(
                f.name,
                _FIELD_TYPES[f.type],
                f.default,
                optional=f.name in ADDED_SAMPLING_KEYS,
            )
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
    check_evaluation(path, evaluation)

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


def check_evaluation(path: Path, evaluation: EvaluationEntry) -> None:
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
# Writing baseline files


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
    """The baseline as plain data in file order (None for absent values; files leave them out)."""

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
    # Keys added after version 1 are written only when they differ from their default, so
    # that rewriting an older baseline (`--update`) keeps its [sampling] table as it was.
    defaults = {f.name: f.default for f in dataclasses.fields(baseline.sampling)}
    data["sampling"] = {
        key: value
        for key, value in dataclasses.asdict(baseline.sampling).items()
        if key not in ADDED_SAMPLING_KEYS or value != defaults[key]
    }
    data["reference"] = dataclasses.asdict(baseline.reference)
    data["evaluation"] = dataclasses.asdict(baseline.evaluation)
    data["metrics"] = metrics
    if baseline.provenance:
        data["provenance"] = baseline.provenance
    return data


def baseline_to_toml(baseline: Baseline) -> str:
    """The baseline file's text: a comment header, then `baseline_to_dict` as TOML (tomli_w)."""
    import tomli_w

    data = _present(baseline.path, baseline_to_dict(baseline))
    return BASELINE_HEADER.format(name=baseline.path.name) + tomli_w.dumps(data)


def _present(path: Path, table: Mapping[str, Any]) -> dict[str, Any]:
    """`table` without None values and empty tables (TOML has no null); rejects inf and nan."""
    kept: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            value = _present(path, value)
            if not value:
                continue
        elif value is None:
            continue
        elif isinstance(value, float) and not math.isfinite(value):
            raise EvalsuiteError(f"{path}: cannot record the non-finite value {key} = {value}")
        kept[key] = value
    return kept


def write_baseline(baseline: Baseline) -> Path:
    """Write `baseline` to `baseline.path` atomically (temp file + os.replace)."""
    text = baseline_to_toml(baseline)
    with atomic_path(baseline.path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return baseline.path


# ---------------------------------------------------------------------------------------------
# Paths in a baseline


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
