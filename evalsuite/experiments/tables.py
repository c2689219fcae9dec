"""A run directory's records (`load_run`) and its paper-style tables for `report`.

Sweeps get the Table-4 layout, ablations the Table-1 layout (see `evalsuite.experiments.report`).
Each table is written as Markdown, LaTeX (booktabs, best value per column in bold, arrows in the
headers) and CSV (plain numbers: values and interval bounds). pandas is imported inside the
functions that need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evalsuite.experiments.runstore import read_config, read_records
from evalsuite.runtime.errors import EvalsuiteError

if TYPE_CHECKING:
    import pandas as pd

# Unicode minus for signed differences in Markdown.
MINUS = "\u2212"


@dataclass(frozen=True)
class ValueColumn:
    """A numeric column: record key, header text, which direction is better, decimals shown."""

    key: str
    label: str
    better: str
    digits: int


# Metric columns of the Table-4 layout, in the paper's order (+ KID and class agreement).
METRIC_COLUMNS = (
    ValueColumn("fid", "FID", "lower", 2),
    ValueColumn("sfid", "sFID", "lower", 2),
    ValueColumn("inception_score", "IS", "higher", 2),
    ValueColumn("precision", "Precision", "higher", 3),
    ValueColumn("recall", "Recall", "higher", 3),
    ValueColumn("kid", "KID", "lower", 4),
    ValueColumn("class_agreement", "Class agreement", "higher", 3),
    # exp E KL(p(y|x) || p(y)) with the zoo's judge: the IS formula, not the Inception Score.
    ValueColumn("judge_score", "Judge score", "higher", 2),
)
# How each guidance kind's scale reads, for captions and axes.
SCALE_AXIS = {
    "classifier": "classifier scale (0 = unguided)",
    "cfg": "CFG scale s (1 = conditional, 0 = unconditional; w = s − 1)",
}

# Architecture columns of the Table-1 layout: header, how to read it off a UNet config dict.
ARCHITECTURE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("Channels", lambda c: c["num_channels"]),
    ("Depth", lambda c: c["num_res_blocks"]),
    ("Heads", lambda c: c["num_heads"] if c["num_head_channels"] == -1 else None),
    (
        "Channels per head",
        lambda c: c["num_head_channels"] if c["num_head_channels"] != -1 else None,
    ),
    ("Attention resolutions", lambda c: ",".join(str(r) for r in c["attention_resolutions"])),
    ("BigGAN up/down", lambda c: bool(c["resblock_updown"])),
    ("AdaGN", lambda c: bool(c["use_scale_shift_norm"])),
    ("Rescale residual", lambda c: bool(c.get("rescale_residual", False))),
)


@dataclass
class RunResults:
    """A run directory's configuration and its records (one row per finished cell)."""

    run_dir: Path
    config: dict[str, Any]
    records: pd.DataFrame

    @property
    def kind(self) -> str:
        return self.config["identity"]["kind"]

    @property
    def annotations(self) -> dict[str, Any]:
        return self.config.get("annotations") or {}


def load_run(run_dir: str | Path) -> RunResults:
    """Read RUN_DIR; an empty, foreign or unfinished directory raises `EvalsuiteError`."""
    import pandas as pd

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalsuiteError(f"{run_dir}: no such run directory")
    config = read_config(run_dir)
    records = read_records(run_dir)
    if not records:
        raise EvalsuiteError(
            f"{run_dir} has no finished cells yet (empty records.jsonl); rerun the sweep to finish one"
        )
    frame = pd.DataFrame(records)
    grid = config["identity"]["grid"]
    rows = [model["name"] for model in config["identity"]["models"]]
    frame["_order"] = [
        (
            rows.index(r["model"]) if r["model"] in rows else len(rows),
            grid["samplers"].index(r["sampler"]) if r["sampler"] in grid["samplers"] else 0,
            grid["steps"].index(r["steps"]) if r["steps"] in grid["steps"] else 0,
            r["guidance_scale"],
        )
        for r in records
    ]
    frame = frame.sort_values("_order", kind="stable").drop(columns="_order")
    return RunResults(run_dir, config, frame.reset_index(drop=True))


def _series_labels(frame: pd.DataFrame) -> list[str]:
    """Model name, plus sampler and steps when the run has several of them."""
    several = frame[["sampler", "steps"]].drop_duplicates().shape[0] > 1
    return [
        f"{m} ({s} {st})" if several else str(m)
        for m, s, st in zip(frame["model"], frame["sampler"], frame["steps"], strict=True)
    ]


@dataclass
class PaperTable:
    """A table ready to render: label columns, numeric value columns and their intervals.

    labels: one column per label (raw values, as written to CSV); values, ci_low, ci_high:
    float frames with one column per `columns` key (NaN = not available); baseline: the row
    shown in absolute numbers when `differences` is set (all other rows relative to it).
    """

    name: str
    caption: str
    labels: pd.DataFrame
    columns: list[ValueColumn]
    values: pd.DataFrame
    ci_low: pd.DataFrame
    ci_high: pd.DataFrame
    baseline: int | None = None
    differences: bool = False
    label_formats: dict[str, Any] | None = None


def _interval_frames(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    low = pd.DataFrame(
        {k: frame.get(f"{k}_ci_low", pd.Series([np.nan] * len(frame))) for k in keys}
    )
    high = pd.DataFrame(
        {k: frame.get(f"{k}_ci_high", pd.Series([np.nan] * len(frame))) for k in keys}
    )
    return low.astype(float).reset_index(drop=True), high.astype(float).reset_index(drop=True)


def _scale_text(scale: float) -> str:
    return "none" if scale == 0 else f"{scale:g}"


def _guidance_kinds(frame: pd.DataFrame) -> list[str]:
    """The guidance kinds of a run's records (records before CFG existed: classifier)."""
    if "guidance" not in frame:
        return ["classifier"]
    return list(dict.fromkeys(frame["guidance"].fillna("classifier")))


def scale_axis_label(frame: pd.DataFrame) -> str:
    """The guidance-scale axis label, naming each kind's convention."""
    kinds = _guidance_kinds(frame)
    if kinds == ["classifier"]:
        return "guidance scale"
    return "; ".join(SCALE_AXIS[kind] for kind in kinds)


def table4(run: RunResults) -> PaperTable:
    """The Table-4 layout: one row per model (x sampler/steps) x guidance scale."""
    import pandas as pd

    frame = run.records
    several = frame[["sampler", "steps"]].drop_duplicates().shape[0] > 1
    labels = {"Model": frame["model"].tolist()}
    if several:
        labels["Sampler"] = frame["sampler"].tolist()
        labels["Steps"] = frame["steps"].tolist()
    kinds = _guidance_kinds(frame)
    label_formats: dict[str, Any] = {"Guidance scale": _scale_text}
    caption = "Sample quality by model and classifier-guidance scale"
    if "cfg" in kinds:
        # Classifier-guided and CFG rows side by side: each scale in its own convention.
        guidance = frame["guidance"].fillna("classifier").tolist()
        labels["Guidance"] = ["CFG" if g == "cfg" else "classifier" for g in guidance]
        labels["Guidance scale"] = [
            f"{s:g}" if g == "cfg" else _scale_text(s)
            for g, s in zip(guidance, frame["guidance_scale"].astype(float), strict=True)
        ]
        label_formats = {}
        caption = (
            "Sample quality by model, guidance kind and scale (classifier: the gradient's "
            "scale, none = unguided; CFG: s in eps(x,∅) + s (eps(x,y) − eps(x,∅)), "
            "1 = conditional, 0 = unconditional, the CFG paper's w = s − 1)"
        )
    else:
        labels["Guidance scale"] = frame["guidance_scale"].astype(float).tolist()
    columns = [
        column
        for column in METRIC_COLUMNS
        if column.key in frame and frame[column.key].notna().any()
    ]
    keys = [column.key for column in columns]
    values = frame[keys].astype(float).reset_index(drop=True)
    low, high = _interval_frames(frame, keys)
    samples = int(frame["num_samples"].iloc[0])
    return PaperTable(
        name="table4",
        caption=f"{caption} ({samples} samples per row).",
        labels=pd.DataFrame(labels),
        columns=columns,
        values=values,
        ci_low=low,
        ci_high=high,
        label_formats=label_formats,
    )


def _architectures(run: RunResults) -> dict[str, dict[str, Any]]:
    """Each variant's UNet config (from the run identity)."""
    found: dict[str, dict[str, Any]] = {}
    for model in run.config["identity"]["models"]:
        if model.get("variant") is not None:
            found.setdefault(model["variant"], model["model"]["config"])
    return found


def table1(run: RunResults, *, absolute: bool = False) -> PaperTable:
    """The Table-1 layout: one row per variant, differing architecture columns, FID per point.

    The baseline (annotation `baseline`, else the first variant) is shown in absolute FID and
    the other rows as differences from it, unless `absolute`.
    """
    import pandas as pd

    if run.kind != "ablate":
        raise EvalsuiteError(f"{run.run_dir} is a {run.kind} run; Table 1 needs an ablation run")
    frame = run.records
    annotations = run.annotations
    architectures = _architectures(run)
    variants = [v for v in annotations.get("variants", architectures) if v in architectures]
    points = annotations.get("points") or list(dict.fromkeys(frame["training_point"]))
    baseline_name = annotations.get("baseline") or variants[0]
    labels: dict[str, list[Any]] = {"Variant": variants}
    for header, read in ARCHITECTURE_COLUMNS:
        column = [read(architectures[v]) for v in variants]
        if len({_label_key(value) for value in column}) > 1:
            labels[header] = column
    columns, values, low, high = [], {}, {}, {}
    for point in points:
        key = f"fid@{point}"
        columns.append(ValueColumn(key, f"FID {point}", "lower", 2))
        per_variant = []
        for variant in variants:
            match = frame[(frame["variant"] == variant) & (frame["training_point"] == point)]
            per_variant.append(match.iloc[0] if len(match) else None)
        values[key] = [np.nan if r is None else _number(r.get("fid")) for r in per_variant]
        low[key] = [np.nan if r is None else _number(r.get("fid_ci_low")) for r in per_variant]
        high[key] = [np.nan if r is None else _number(r.get("fid_ci_high")) for r in per_variant]
    samples = int(frame["num_samples"].iloc[0])
    what = "absolute FID" if absolute else f"FID of {baseline_name}; other rows: difference from it"
    return PaperTable(
        name="table1",
        caption=f"Architecture ablations ({samples} samples per cell; {what}).",
        labels=pd.DataFrame(labels),
        columns=columns,
        values=pd.DataFrame(values, dtype=float),
        ci_low=pd.DataFrame(low, dtype=float),
        ci_high=pd.DataFrame(high, dtype=float),
        baseline=variants.index(baseline_name),
        differences=not absolute,
    )


def _label_key(value: Any) -> str:
    """A hashable text form of a label value (for telling whether a column differs)."""
    return repr(value)


def _number(value: Any) -> float:
    return np.nan if value is None else float(value)


def _best_rows(table: PaperTable, key: str, better: str) -> set[int]:
    column = table.values[key]
    if column.isna().all():
        return set()
    best = column.min() if better == "lower" else column.max()
    return set(np.flatnonzero(np.isclose(column.to_numpy(), best, rtol=0, atol=1e-12)))


def _value_text(table: PaperTable, row: int, column: ValueColumn, latex: bool) -> str:
    value = table.values.at[row, column.key]
    if math.isnan(value):
        return "--" if latex else "—"
    relative = table.differences and table.baseline is not None and row != table.baseline
    if relative:
        value = value - table.values.at[table.baseline, column.key]
        text = f"{value:+.{column.digits}f}"
        sign, digits = text[0], text[1:]
        text = (f"${sign}$" if latex else sign.replace("-", MINUS)) + digits
    else:
        text = f"{value:.{column.digits}f}"
    low, high = table.ci_low.at[row, column.key], table.ci_high.at[row, column.key]
    if not (math.isnan(low) or math.isnan(high)):
        half = (high - low) / 2
        text += f" $\\pm$ {half:.{column.digits}f}" if latex else f" ± {half:.{column.digits}f}"
    if row in _best_rows(table, column.key, column.better):
        text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def _label_text(table: PaperTable, header: str, value: Any, latex: bool) -> str:
    formats = table.label_formats or {}
    if header in formats:
        text = formats[header](value)
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        text = "--" if latex else "—"
    elif isinstance(value, (bool, np.bool_)):
        text = ("\\checkmark" if value else "$\\times$") if latex else ("✓" if value else "✗")
        return text
    else:
        text = str(value)
    return latex_escape(text) if latex else text


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(replacements.get(char, char) for char in text)


def _headers(table: PaperTable, latex: bool) -> list[str]:
    arrows = (
        {"lower": "$\\downarrow$", "higher": "$\\uparrow$"}
        if latex
        else {"lower": "↓", "higher": "↑"}
    )
    labels = [latex_escape(h) if latex else h for h in table.labels.columns]
    values = [
        f"{latex_escape(c.label) if latex else c.label} {arrows[c.better]}" for c in table.columns
    ]
    return labels + values


def _rows(table: PaperTable, latex: bool) -> list[list[str]]:
    rows = []
    for row in range(len(table.labels)):
        cells = [
            _label_text(table, header, table.labels.at[row, header], latex)
            for header in table.labels.columns
        ]
        cells += [_value_text(table, row, column, latex) for column in table.columns]
        rows.append(cells)
    return rows


def to_markdown(table: PaperTable) -> str:
    """A GitHub-flavoured Markdown table (labels left-aligned, numbers right-aligned)."""
    headers = _headers(table, latex=False)
    align = [":--"] * len(table.labels.columns) + ["--:"] * len(table.columns)
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(cells) + " |" for cells in _rows(table, latex=False)),
    ]
    return "\n".join(lines) + "\n"


def to_latex(table: PaperTable) -> str:
    """A booktabs LaTeX table (pandas Styler), best value per column in bold.

    Needs \\usepackage{booktabs} and amssymb (for \\checkmark) in the document.
    """
    import pandas as pd

    display = pd.DataFrame(_rows(table, latex=True), columns=_headers(table, latex=True))
    styler = display.style.hide(axis="index")
    column_format = "l" * len(table.labels.columns) + "r" * len(table.columns)
    latex = styler.to_latex(
        hrules=True,
        column_format=column_format,
        caption=latex_escape(table.caption),
        label=f"tab:{table.name}",
        position="t",
        position_float="centering",
    )
    return "% needs \\usepackage{booktabs} and \\usepackage{amssymb}\n" + latex


def to_csv_frame(table: PaperTable) -> pd.DataFrame:
    """The table as plain numbers: label columns, then each value with its interval bounds."""
    import pandas as pd

    frame = table.labels.copy()
    frame.columns = [_csv_name(c) for c in frame.columns]
    for column in table.columns:
        frame[column.key] = table.values[column.key]
        frame[f"{column.key}_ci_low"] = table.ci_low[column.key]
        frame[f"{column.key}_ci_high"] = table.ci_high[column.key]
    if table.baseline is not None:
        frame["baseline"] = pd.Series(range(len(frame))) == table.baseline
    return frame


def _csv_name(header: str) -> str:
    return header.lower().replace(" ", "_").replace("/", "_")


def write_table(table: PaperTable, out_dir: Path) -> list[Path]:
    """Write `<name>.md`, `<name>.tex` and `<name>.csv` into `out_dir`."""
    from evalsuite.runtime.cache import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in (
        ("md", f"{table.caption}\n\n{to_markdown(table)}"),
        ("tex", to_latex(table)),
    ):
        path = out_dir / f"{table.name}.{suffix}"
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(path)
    path = out_dir / f"{table.name}.csv"
    with atomic_path(path) as tmp:
        to_csv_frame(table).to_csv(tmp, index=False)
    written.append(path)
    return written
