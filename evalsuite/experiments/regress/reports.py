"""The report of a regression run: an aligned console table, a Markdown table for CI job
summaries ($GITHUB_STEP_SUMMARY) and a JSON document (`RegressResult.to_json`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evalsuite.experiments.regress.compare import (
    STATUS_BETTER,
    STATUS_FAIL,
    STATUS_PASS,
    Comparison,
    RegressResult,
)
from evalsuite.runtime.cache import atomic_path


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
    if result.samples_batch is not None:
        lines.append(f"scored the sample batch {result.samples_batch} (not regenerated)")
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
        f"guidance={_guidance(baseline.sampling)} device={result.environment['device']} "
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


def _guidance(sampling: Any) -> str:
    """ "3" (classifier gradient scale, the ADM default) or "cfg:3" (classifier-free guidance)."""
    kind = getattr(sampling, "guidance", "classifier")
    scale = f"{sampling.guidance_scale:g}"
    if kind != "cfg":
        return scale
    extra = getattr(sampling, "classifier_scale", 0.0)
    return f"cfg:{scale}" + (f"+classifier:{extra:g}" if extra else "")
