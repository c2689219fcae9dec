"""`report`: paper-style tables and figures of a run directory (ADM protocol §7).

Sweeps get the Table-4 layout (model x guidance scale rows; FID, sFID, IS, Precision, Recall and,
when judged, class agreement), ablations the Table-1 layout (one row per variant, the
architecture columns that differ, FID at each training point, the baseline in absolute numbers
and the other rows as differences). Each table is written as Markdown, LaTeX (booktabs, best
value per column in bold, arrows in the headers) and CSV (plain numbers: values and interval
bounds). Bootstrap intervals are shown as ± half the width of the 95% interval.

Figures (seaborn on matplotlib's Agg backend, PNG and PDF): the precision-recall and IS-FID
trade-offs (FID vs scale when IS is unavailable) with points labelled by scale, each metric vs
scale, FID vs training point for ablations, and a grid of samples per class and scale.
pandas, seaborn and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evalsuite.experiments.figures import (
    FIGURE_DPI,  # noqa: F401
    GRID_MIN_TILE,  # noqa: F401
    GRID_PER_CLASS,  # noqa: F401
    Mosaic,  # noqa: F401
    grid_mosaic,  # noqa: F401
    plot_ablation,  # noqa: F401
    plot_sample_grid,  # noqa: F401
    plot_sweep,  # noqa: F401
)
from evalsuite.experiments.tables import (
    ARCHITECTURE_COLUMNS,  # noqa: F401
    METRIC_COLUMNS,  # noqa: F401
    MINUS,  # noqa: F401
    SCALE_AXIS,  # noqa: F401
    PaperTable,  # noqa: F401
    RunResults,  # noqa: F401
    ValueColumn,  # noqa: F401
    latex_escape,  # noqa: F401
    load_run,  # noqa: F401
    scale_axis_label,  # noqa: F401
    table1,  # noqa: F401
    table4,  # noqa: F401
    to_csv_frame,  # noqa: F401
    to_latex,  # noqa: F401
    to_markdown,  # noqa: F401
    write_table,  # noqa: F401
)

REPORT_DIR = "report"


@dataclass
class Report:
    """What `write_report` produced: the main table and every file written."""

    table: PaperTable
    files: list[Path]


def write_report(
    run_dir: str | Path, out_dir: str | Path | None = None, *, absolute: bool = False
) -> Report:
    """Tables (Markdown, LaTeX, CSV) and figures (PNG, PDF) of RUN_DIR into OUT (RUN_DIR/report).

    Sweeps: table4.*, tradeoff.*, metrics_vs_scale.*, grid.png. Ablations: table1.*
    (differences from the baseline unless `absolute`), table4.* of every cell,
    ablation_fid.*, grid.png.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / REPORT_DIR
    files: list[Path] = []
    cells = table4(run)
    files += write_table(cells, out)
    if run.kind == "ablate":
        main = table1(run, absolute=absolute)
        files += write_table(main, out)
        files += plot_ablation(run, out)
    else:
        main = cells
        files += plot_sweep(run, out)
    files += plot_sample_grid(run, out)
    return Report(main, files)
