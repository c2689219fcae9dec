"""`ablate`: compare architecture variants at several training points (the paper's Table 1).

A spec (TOML) names the variants, each with its checkpoint(s) and architecture, plus the shared
sampling and evaluation settings; `run_ablation` turns it into a sweep whose rows are
(variant, training point) pairs and whose report has the Table-1 layout. The whole spec is
validated before any work; every error names the spec file and the offending key.

    title = "Architecture ablations"        # optional
    baseline = "baseline"                   # optional; default: the first variant

    [sampling]                              # optional; defaults below
    num_samples = 200
    sampler = "ddim"                        # "ddpm" or "ddim"
    steps = "ddim25"                        # respacing, e.g. "250", "ddim25"
    guidance_scale = 0.0                    # > 0 needs a classifier in every variant
    guidance = "classifier"                 # optional: "classifier" (default) or "cfg"
                                            # (CFG scale s: 1 = conditional; null-class models)
    seed = 0
    classes = "uniform"                     # "uniform", "balanced" or "0,3,7"
    eta = 0.0

    [evaluation]
    reference = "zoo"                       # "zoo" or a reference file (relative to the spec)
    metrics = ["fid", "sfid", "pr"]         # FID is required (Table 1 reports it)
    bootstrap = 100                         # resamples for the intervals; 0 = off
    bootstrap_seed = 0
    ref_stats = "auto"
    judge = "zoo"                           # optional: class agreement ("zoo" or a file)
    inception_weights = "weights.pth"       # optional

    [[variant]]
    name = "baseline"
    description = "AdaGN, BigGAN up/down"   # optional
    checkpoints = { "700K" = "a_700k.pt", "1200K" = "a_1200k.pt" }   # or checkpoint = "a.pt"
    # architecture (optional for evalsuite checkpoints, which embed it): one of
    # flags = "--image_size 16 --num_channels 32 ..."  |  preset = "128x128_diffusion"
    # [variant.config] with flag names as keys, e.g. num_channels = 32, attention_resolutions = [8, 4]
    # classifier = "c.pt" (+ classifier_flags / classifier_preset) when guidance_scale > 0

Checkpoint, reference, judge and weights paths are relative to the spec file's folder.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalsuite import zoo
from evalsuite.experiments.sweep import ModelRow, SweepConfig, run_sweep
from evalsuite.models.config import build_configs
from evalsuite.pipeline.evaluate import REF_STATS_CHOICES, MetricOptions, parse_metrics
from evalsuite.pipeline.sample import GUIDANCE_KINDS, SAMPLERS
from evalsuite.runtime.errors import EvalsuiteError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Label of the single training point of a variant given `checkpoint = "file.pt"`.
SINGLE_POINT = "final"
# Names of variants and training points become part of file names.
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
ZOO_KEYWORD = "zoo"

TOP_KEYS = ("title", "baseline", "sampling", "evaluation", "variant")
SAMPLING_KEYS = (
    "num_samples",
    "sampler",
    "steps",
    "guidance_scale",
    "guidance",
    "seed",
    "classes",
    "eta",
)
EVALUATION_KEYS = (
    "reference",
    "metrics",
    "bootstrap",
    "bootstrap_seed",
    "ref_stats",
    "judge",
    "inception_weights",
    "pr_k",
)
VARIANT_KEYS = (
    "name",
    "description",
    "checkpoints",
    "checkpoint",
    "flags",
    "preset",
    "config",
    "classifier",
    "classifier_flags",
    "classifier_preset",
)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table: its checkpoints by training point and architecture."""

    name: str
    checkpoints: dict[str, str]
    description: str = ""
    flags: str | None = None
    preset: str | None = None
    classifier: str | None = None
    classifier_flags: str | None = None
    classifier_preset: str | None = None


@dataclass(frozen=True)
class AblationSpec:
    """A validated ablation spec, with every path resolved."""

    path: Path
    title: str
    baseline: str
    variants: tuple[Variant, ...]
    points: tuple[str, ...]
    sampling: dict[str, Any]
    evaluation: dict[str, Any]
    uses_zoo: bool = False
    metric_options: MetricOptions = field(default_factory=MetricOptions)

    def sweep_config(self) -> SweepConfig:
        """The ablation as a sweep: one row per (variant, training point)."""
        rows = tuple(
            ModelRow(
                name=f"{variant.name}@{point}",
                model=checkpoint,
                model_flags=variant.flags,
                preset=variant.preset,
                classifier=variant.classifier,
                classifier_flags=variant.classifier_flags,
                classifier_preset=variant.classifier_preset,
                variant=variant.name,
                training_point=point,
                guidance=self.sampling.get("guidance"),
            )
            for variant in self.variants
            for point, checkpoint in variant.checkpoints.items()
        )
        sampling, evaluation = self.sampling, self.evaluation
        return SweepConfig(
            rows=rows,
            reference=evaluation["reference"],
            scales=(float(sampling["guidance_scale"]),),
            samplers=(sampling["sampler"],),
            steps=(sampling["steps"],),
            num_samples=sampling["num_samples"],
            seed=sampling["seed"],
            classes=sampling["classes"],
            eta=float(sampling["eta"]),
            metrics=evaluation["metrics"],
            ref_stats=evaluation["ref_stats"],
            judge=evaluation["judge"],
            bootstrap=evaluation["bootstrap"],
            bootstrap_seed=evaluation["bootstrap_seed"],
            inception_weights=evaluation["inception_weights"],
            metric_options=self.metric_options,
            kind="ablate",
        )

    def annotations(self) -> dict[str, Any]:
        """What the report needs beyond the records: row order, baseline, descriptions."""
        found: dict[str, Any] = {
            "title": self.title,
            "spec": str(self.path),
            "baseline": self.baseline,
            "variants": [v.name for v in self.variants],
            "descriptions": {v.name: v.description for v in self.variants},
            "points": list(self.points),
        }
        if self.uses_zoo:
            from evalsuite.zoo.shapes import CLASS_NAMES

            found["class_names"] = list(CLASS_NAMES)
        return found


class _SpecReader:
    """Typed access to the parsed TOML with errors that name the spec file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = path.parent

    def fail(self, key: str, problem: str) -> EvalsuiteError:
        return EvalsuiteError(f"{self.path}: {key}: {problem}")

    def table(self, data: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(key, f"expected a table, got {_kind(data)}")
        for name in data:
            if name not in allowed:
                raise self.fail(
                    f"{key}.{name}" if key else name,
                    f"unknown key; expected one of {', '.join(allowed)}",
                )
        return data

    def string(self, data: dict[str, Any], key: str, where: str, default: Any = None) -> Any:
        value = data.get(key, default)
        if value is not default and not isinstance(value, str):
            raise self.fail(f"{where}{key}", f"expected a string, got {_kind(value)}")
        return value

    def integer(self, data: dict[str, Any], key: str, where: str, default: int, low: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{where}{key}", f"expected an integer, got {_kind(value)}")
        if value < low:
            raise self.fail(f"{where}{key}", f"expected an integer >= {low}, got {value}")
        return value

    def number(self, data: dict[str, Any], key: str, where: str, default: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{where}{key}", f"expected a number, got {_kind(value)}")
        if not math.isfinite(value) or value < 0:
            raise self.fail(f"{where}{key}", f"expected a finite number >= 0, got {value}")
        return float(value)

    def file(self, value: str, key: str, resolve: Callable[[str], Path] | None = None) -> str:
        """A path relative to the spec's folder that must exist (or, via `resolve`, a zoo file)."""
        if resolve is not None:
            try:
                return str(resolve(value))
            except EvalsuiteError as error:
                raise self.fail(key, str(error)) from None
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.folder / path
        if not path.is_file():
            raise self.fail(key, f"file {path} does not exist")
        return str(path)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return names.get(type(value), type(value).__name__)


def _flags_from_table(reader: _SpecReader, table: Any, key: str) -> str:
    """[variant.config] (flag name -> value) as a guided-diffusion flag string."""
    if not isinstance(table, dict) or not table:
        raise reader.fail(key, "expected a table of architecture flags, e.g. num_channels = 32")
    parts = []
    for name, value in table.items():
        if isinstance(value, (bool, int, float, str)):
            text = str(value)
        elif isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            text = ",".join(str(v) for v in value)
        else:
            raise reader.fail(
                f"{key}.{name}",
                f"expected a number, string, boolean or list of numbers, got {_kind(value)}",
            )
        parts.append(f"--{name} {text}")
    return " ".join(parts)


def _variant(
    reader: _SpecReader, data: Any, position: int, resolve: Callable[[str], Path] | None
) -> Variant:
    key = f"variant[{position}]"
    data = reader.table(data, key, VARIANT_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not LABEL_PATTERN.match(name):
        raise reader.fail(
            f"{key}.name",
            f"expected a name of letters, digits and . _ + - (got {name!r})",
        )
    key = f"variant.{name}"
    description = reader.string(data, "description", f"{key}.", "")
    if ("checkpoints" in data) == ("checkpoint" in data):
        raise reader.fail(
            key, 'give either checkpoints = { "700K" = "a.pt", ... } or checkpoint = "a.pt"'
        )
    if "checkpoint" in data:
        single = reader.string(data, "checkpoint", f"{key}.")
        checkpoints = {SINGLE_POINT: reader.file(single, f"{key}.checkpoint", resolve)}
    else:
        table = data["checkpoints"]
        if not isinstance(table, dict) or not table:
            raise reader.fail(
                f"{key}.checkpoints",
                'expected a table of training point -> file, e.g. { "700K" = "a.pt" }',
            )
        checkpoints = {}
        for point, file in table.items():
            where = f"{key}.checkpoints.{point}"
            if not LABEL_PATTERN.match(point):
                raise reader.fail(where, "training point labels use letters, digits and . _ + -")
            if not isinstance(file, str):
                raise reader.fail(where, f"expected a file name, got {_kind(file)}")
            checkpoints[point] = reader.file(file, where, resolve)
    architecture = [k for k in ("flags", "preset", "config") if k in data]
    if len(architecture) > 1:
        raise reader.fail(
            f"{key}.{architecture[1]}",
            f"give only one of flags, preset and config (also {architecture[0]})",
        )
    flags = reader.string(data, "flags", f"{key}.")
    preset = reader.string(data, "preset", f"{key}.")
    if "config" in data:
        flags = _flags_from_table(reader, data["config"], f"{key}.config")
    if flags is not None:
        try:
            build_configs(flags, "unet")
        except EvalsuiteError as error:
            raise reader.fail(f"{key}.{architecture[0]}", str(error)) from None
    classifier = reader.string(data, "classifier", f"{key}.")
    if classifier is not None:
        classifier = reader.file(classifier, f"{key}.classifier")
    for option in ("classifier_flags", "classifier_preset"):
        if option in data and classifier is None:
            raise reader.fail(f"{key}.{option}", "given without classifier = FILE")
    return Variant(
        name=name,
        checkpoints=checkpoints,
        description=description,
        flags=flags,
        preset=preset,
        classifier=classifier,
        classifier_flags=reader.string(data, "classifier_flags", f"{key}."),
        classifier_preset=reader.string(data, "classifier_preset", f"{key}."),
    )


def load_spec(path: str | Path) -> AblationSpec:
    """Read and validate an ablation spec (no checkpoint is loaded; files must exist)."""
    path = Path(path)
    if not path.is_file():
        raise EvalsuiteError(f"{path}: no such ablation spec (a .toml file)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise EvalsuiteError(f"{path}: not valid TOML ({error})") from None
    reader = _SpecReader(path)
    reader.table(data, "", TOP_KEYS)
    is_zoo_spec = path.resolve().parent == Path(zoo.ZOO_DIR).resolve()
    # Checkpoints of the zoo's own spec are checked against the zoo manifest.
    resolve = zoo.asset if is_zoo_spec else None

    sampling = reader.table(data.get("sampling", {}), "sampling", SAMPLING_KEYS)
    sampler = reader.string(sampling, "sampler", "sampling.", "ddim")
    if sampler not in SAMPLERS:
        raise reader.fail(
            "sampling.sampler", f"expected one of {', '.join(SAMPLERS)}, got {sampler!r}"
        )
    resolved_sampling = {
        "num_samples": reader.integer(sampling, "num_samples", "sampling.", 200, 2),
        "sampler": sampler,
        "steps": reader.string(sampling, "steps", "sampling.", "ddim25"),
        "guidance_scale": reader.number(sampling, "guidance_scale", "sampling.", 0.0),
        "seed": reader.integer(sampling, "seed", "sampling.", 0, 0),
        "classes": reader.string(sampling, "classes", "sampling.", "uniform"),
        "eta": reader.number(sampling, "eta", "sampling.", 0.0),
        "guidance": reader.string(sampling, "guidance", "sampling.", None),
    }
    if resolved_sampling["guidance"] not in (None, *GUIDANCE_KINDS):
        raise reader.fail(
            "sampling.guidance",
            f"expected one of {', '.join(GUIDANCE_KINDS)}, got {resolved_sampling['guidance']!r}",
        )
    classifier_guided = resolved_sampling["guidance"] in (None, "classifier")

    evaluation = reader.table(data.get("evaluation", {}), "evaluation", EVALUATION_KEYS)
    uses_zoo = is_zoo_spec
    reference = reader.string(evaluation, "reference", "evaluation.")
    if reference is None:
        raise reader.fail("evaluation.reference", 'missing; give a reference file or "zoo"')
    if reference == ZOO_KEYWORD:
        reference = reader.file(reference, "evaluation.reference", lambda _: zoo.reference())
        uses_zoo = True
    else:
        reference = reader.file(reference, "evaluation.reference")
    judge = reader.string(evaluation, "judge", "evaluation.")
    if judge == ZOO_KEYWORD:
        judge = reader.file(judge, "evaluation.judge", lambda _: zoo.asset(zoo.JUDGE))
    elif judge is not None:
        judge = reader.file(judge, "evaluation.judge")
    weights = reader.string(evaluation, "inception_weights", "evaluation.")
    if weights is not None:
        weights = reader.file(weights, "evaluation.inception_weights")
    metrics_value = evaluation.get("metrics", ["fid"])
    if isinstance(metrics_value, list) and all(isinstance(m, str) for m in metrics_value):
        metrics_text = ",".join(metrics_value)
    elif isinstance(metrics_value, str):
        metrics_text = metrics_value
    else:
        raise reader.fail(
            "evaluation.metrics", f'expected a list such as ["fid"], got {_kind(metrics_value)}'
        )
    try:
        metrics = parse_metrics(metrics_text)
    except EvalsuiteError as error:
        raise reader.fail("evaluation.metrics", str(error)) from None
    if "fid" not in metrics:
        raise reader.fail("evaluation.metrics", "must include fid (the ablation table reports FID)")
    ref_stats = reader.string(evaluation, "ref_stats", "evaluation.", "auto")
    if ref_stats not in REF_STATS_CHOICES:
        raise reader.fail("evaluation.ref_stats", f"expected one of {', '.join(REF_STATS_CHOICES)}")
    resolved_evaluation = {
        "reference": reference,
        "metrics": metrics,
        "bootstrap": reader.integer(evaluation, "bootstrap", "evaluation.", 100, 0),
        "bootstrap_seed": reader.integer(evaluation, "bootstrap_seed", "evaluation.", 0, 0),
        "ref_stats": ref_stats,
        "judge": judge,
        "inception_weights": weights,
    }
    if resolved_evaluation["bootstrap"] == 1:
        raise reader.fail("evaluation.bootstrap", "expected 0 (off) or >= 2 resamples")
    options = MetricOptions(pr_k=reader.integer(evaluation, "pr_k", "evaluation.", 3, 1))

    raw_variants = data.get("variant")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise reader.fail(
            "variant", "no variants; add [[variant]] tables with name and checkpoints"
        )
    variants = []
    for position, raw in enumerate(raw_variants):
        variant = _variant(reader, raw, position, resolve)
        if any(v.name == variant.name for v in variants):
            raise reader.fail(
                f"variant[{position}].name", f"duplicate variant name {variant.name!r}"
            )
        if resolved_sampling["guidance"] == "classifier" and variant.classifier is None:
            raise reader.fail(
                f"variant.{variant.name}",
                "sampling.guidance is 'classifier' but the variant has no classifier = FILE",
            )
        if (
            classifier_guided
            and resolved_sampling["guidance_scale"] > 0
            and variant.classifier is None
        ):
            raise reader.fail(
                f"variant.{variant.name}",
                f"sampling.guidance_scale is {resolved_sampling['guidance_scale']:g} but the "
                "variant has no classifier = FILE",
            )
        variants.append(variant)
    names = [v.name for v in variants]
    title = reader.string(data, "title", "", "Architecture ablations")
    baseline = reader.string(data, "baseline", "", names[0])
    if baseline not in names:
        raise reader.fail(
            "baseline", f"{baseline!r} is not a variant; choose one of {', '.join(names)}"
        )
    points = tuple(dict.fromkeys(point for v in variants for point in v.checkpoints))
    return AblationSpec(
        path=path,
        title=title,
        baseline=baseline,
        variants=tuple(variants),
        points=points,
        sampling=resolved_sampling,
        evaluation=resolved_evaluation,
        uses_zoo=uses_zoo,
        metric_options=options,
    )


def run_ablation(
    spec: AblationSpec,
    run_dir: str | Path,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    keep_samples: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Sample and score every (variant, training point) of a validated spec into `run_dir`."""
    return run_sweep(
        spec.sweep_config(),
        run_dir,
        batch_size=batch_size,
        device=device,
        keep_samples=keep_samples,
        progress=progress,
        annotations=spec.annotations(),
        log=log,
    )
