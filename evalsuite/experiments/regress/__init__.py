"""`regress`: CI regression checks of sample quality against a committed baseline file.

A baseline (TOML) fixes a protocol — the checkpoints and their sha256, their architecture, every
sampling setting (N and seed included), the reference statistics and the Inception weights'
sha256 — and the metric values it produced, each with a tolerance (abs, rel or a bootstrap
bound). `check` regenerates the samples with per-sample seeds (bitwise identical on the same CPU
setup), or takes a batch made by `evalsuite sample` from the same protocol, scores them with the
ADM protocol and compares; `update` and `init` record a run as the baseline.

The parts:

- `baseline`: the file format (reading and validating, writing with tomli_w, paths);
- `measure`: checking the protocol's files and hashes, sampling, features and metric values;
- `compare`: tolerances, bootstrap bounds and each metric's verdict (`RegressResult`);
- `reports`: console table, Markdown and JSON;
- `run`: the actions check, update and init;
- `ranks`: the same under `torchrun` (rank 0 decides, errors reach every rank).
"""

from __future__ import annotations

from evalsuite.experiments.regress.baseline import (
    ADDED_SAMPLING_KEYS,
    BASELINE_FORMAT,
    BASELINE_VERSION,
    DIFFUSERS,
    EMBEDDED,
    FLAGS_PREFIX,
    LOWER_IS_BETTER,
    METRIC_GROUPS,
    PRESET_PREFIX,
    TOLERANCE_KINDS,
    ZOO_PREFIX,
    Baseline,
    CheckpointEntry,
    EvaluationEntry,
    Expectation,
    ReferenceEntry,
    Tolerance,
    baseline_to_dict,
    baseline_to_toml,
    load_baseline,
    path_entry,
    resolve_path,
    write_baseline,
)
from evalsuite.experiments.regress.compare import (
    DEFAULT_TOLERANCES,
    STATUS_BETTER,
    STATUS_FAIL,
    STATUS_PASS,
    STATUS_RECORDED,
    Comparison,
    RegressResult,
    allowed_value,
    bootstrap_bounds,
    compare,
    parse_tolerances,
)
from evalsuite.experiments.regress.measure import (
    FEATURE_BATCH_SIZE,
    Measurement,
    Protocol,
    check_sample_batch,
    environment,
    measure,
    prepare,
    samples_digest,
)
from evalsuite.experiments.regress.reports import (
    append_markdown,
    format_table,
    table_rows,
    to_markdown,
    write_json,
)
from evalsuite.experiments.regress.run import check, init, update

__all__ = [
    "ADDED_SAMPLING_KEYS",
    "BASELINE_FORMAT",
    "BASELINE_VERSION",
    "DEFAULT_TOLERANCES",
    "DIFFUSERS",
    "EMBEDDED",
    "FEATURE_BATCH_SIZE",
    "FLAGS_PREFIX",
    "LOWER_IS_BETTER",
    "METRIC_GROUPS",
    "PRESET_PREFIX",
    "STATUS_BETTER",
    "STATUS_FAIL",
    "STATUS_PASS",
    "STATUS_RECORDED",
    "TOLERANCE_KINDS",
    "ZOO_PREFIX",
    "Baseline",
    "CheckpointEntry",
    "Comparison",
    "EvaluationEntry",
    "Expectation",
    "Measurement",
    "Protocol",
    "ReferenceEntry",
    "RegressResult",
    "Tolerance",
    "allowed_value",
    "append_markdown",
    "baseline_to_dict",
    "baseline_to_toml",
    "bootstrap_bounds",
    "check",
    "check_sample_batch",
    "compare",
    "environment",
    "format_table",
    "init",
    "load_baseline",
    "measure",
    "parse_tolerances",
    "path_entry",
    "prepare",
    "resolve_path",
    "samples_digest",
    "table_rows",
    "to_markdown",
    "update",
    "write_baseline",
    "write_json",
]
