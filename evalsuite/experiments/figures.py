"""Figures of a run directory for `report` (seaborn on matplotlib's Agg backend, PNG and PDF).

Sweeps: the precision-recall and IS-FID trade-offs (FID vs scale when IS is unavailable) with
points labelled by scale, and each metric vs scale. Ablations: FID vs training point. Both: a
grid of samples per class and scale (`grid.png`). seaborn and matplotlib are imported inside the
functions that need them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evalsuite.experiments.tables import (
    METRIC_COLUMNS,
    RunResults,
    _guidance_kinds,
    _series_labels,
    scale_axis_label,
)

if TYPE_CHECKING:
    import pandas as pd

FIGURE_DPI = 150
# Samples of one class shown per scale in the sample grid, and the smallest tile edge in pixels.
GRID_PER_CLASS = 4
GRID_MIN_TILE = 48


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt


def _save(figure: Any, out_dir: Path, stem: str) -> list[Path]:
    from evalsuite.runtime.cache import atomic_path

    paths = []
    for suffix in ("png", "pdf"):
        path = out_dir / f"{stem}.{suffix}"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            figure.savefig(fh, format=suffix, dpi=FIGURE_DPI, bbox_inches="tight")
        paths.append(path)
    return paths


def _errors(frame: pd.DataFrame, key: str) -> np.ndarray | None:
    low, high = f"{key}_ci_low", f"{key}_ci_high"
    if low not in frame or frame[low].isna().any():
        return None
    return (frame[high].to_numpy(float) - frame[low].to_numpy(float)) / 2


def _series_plot(
    ax: Any,
    frame: pd.DataFrame,
    x: str,
    y: str,
    palette: dict[str, Any],
    label_points: bool,
    legend_title: str = "model",
) -> None:
    """One line per series with bootstrap error bars; points labelled by guidance scale."""
    import seaborn as sns

    sns.lineplot(
        data=frame,
        x=x,
        y=y,
        hue="series",
        palette=palette,
        marker="o",
        sort=False,
        estimator=None,
        ax=ax,
    )
    if ax.get_legend() is not None:
        ax.legend(title=legend_title)
    for series, group in frame.groupby("series", sort=False):
        xerr = _errors(group, x) if x != "guidance_scale" else None
        yerr = _errors(group, y)
        if xerr is not None or yerr is not None:
            ax.errorbar(
                group[x],
                group[y],
                xerr=xerr,
                yerr=yerr,
                fmt="none",
                ecolor=palette[series],
                alpha=0.6,
                capsize=2,
            )
        if label_points:
            for _, point in group.iterrows():
                ax.annotate(
                    f"s={point['guidance_scale']:g}",
                    (point[x], point[y]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )


def plot_sweep(run: RunResults, out_dir: Path) -> list[Path]:
    """Trade-off curves and metric-vs-scale plots of a sweep (PNG and PDF)."""
    import seaborn as sns

    plt = _pyplot()
    frame = run.records.copy()
    frame["series"] = _series_labels(frame)
    palette = dict(
        zip(
            frame["series"].unique(),
            sns.color_palette(n_colors=frame["series"].nunique()),
            strict=True,
        )
    )
    available = [c for c in METRIC_COLUMNS if c.key in frame and frame[c.key].notna().all()]
    keys = {c.key for c in available}
    scale_label = scale_axis_label(frame)
    label = {c.key: c.label for c in METRIC_COLUMNS} | {"guidance_scale": scale_label}
    pairs = []
    if {"precision", "recall"} <= keys:
        pairs.append(("recall", "precision"))
    if {"judge_score", "recall"} <= keys:
        # The paper's IS-recall trade-off, with the judge in place of Inception.
        pairs.append(("recall", "judge_score"))
    if {"inception_score", "fid"} <= keys:
        pairs.append(("fid", "inception_score"))
    elif "fid" in keys:
        pairs.append(("guidance_scale", "fid"))
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    if pairs:
        figure, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
        for ax, (x, y) in zip(axes[0], pairs, strict=True):
            _series_plot(ax, frame, x, y, palette, label_points=x != "guidance_scale")
            ax.set_xlabel(label[x])
            ax.set_ylabel(label[y])
        kinds = _guidance_kinds(frame)
        titles = {"classifier": "Classifier guidance", "cfg": "Classifier-free guidance (CFG)"}
        figure.suptitle(" and ".join(titles[kind] for kind in kinds) + ": trade-offs")
        figure.tight_layout()
        written += _save(figure, out_dir, "tradeoff")
        plt.close(figure)
    if available:
        ncols = min(3, len(available))
        nrows = math.ceil(len(available) / ncols)
        figure, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.4 * nrows), squeeze=False)
        for ax in axes.flat[len(available) :]:
            ax.set_visible(False)
        for ax, column in zip(axes.flat, available, strict=False):
            _series_plot(ax, frame, "guidance_scale", column.key, palette, label_points=False)
            ax.set_xlabel(scale_label, fontsize=8 if "cfg" in _guidance_kinds(frame) else None)
            ax.set_ylabel(
                f"{column.label} ({'lower' if column.better == 'lower' else 'higher'} is better)"
            )
            if ax.get_legend() is not None and column is not available[-1]:
                ax.get_legend().remove()
        figure.tight_layout()
        written += _save(figure, out_dir, "metrics_vs_scale")
        plt.close(figure)
    return written


def plot_ablation(run: RunResults, out_dir: Path) -> list[Path]:
    """FID at each training point, one line per variant, with bootstrap error bars."""
    import seaborn as sns

    plt = _pyplot()
    frame = run.records.copy()
    points = run.annotations.get("points") or list(dict.fromkeys(frame["training_point"]))
    frame["point"] = [points.index(p) for p in frame["training_point"]]
    frame["series"] = frame["variant"]
    frame = frame.sort_values("point", kind="stable")
    palette = dict(
        zip(
            frame["series"].unique(),
            sns.color_palette(n_colors=frame["series"].nunique()),
            strict=True,
        )
    )
    figure, ax = plt.subplots(figsize=(5.5, 4))
    _series_plot(ax, frame, "point", "fid", palette, label_points=False, legend_title="variant")
    ax.set_xticks(range(len(points)), [str(p) for p in points])
    ax.set_xlabel("training point")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title("Architecture ablations")
    figure.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = _save(figure, out_dir, "ablation_fid")
    plt.close(figure)
    return written


@dataclass
class Mosaic:
    """Samples tiled into one uint8 (H', W', 3) image: rows of classes, blocks of columns.

    rows: the class label of each row (None for rows of unlabelled samples); row_pitch and
    column_pitch: pixels from one row (column block) to the next.
    """

    image: np.ndarray
    rows: list[int | None]
    row_pitch: int
    column_pitch: int


def grid_mosaic(
    columns: list[tuple[np.ndarray, np.ndarray | None]], per_class: int = GRID_PER_CLASS
) -> Mosaic:
    """Tile samples: one row per class, one block of `per_class` samples per column (scale).

    columns: for each column, uint8 (N, H, W, 3) images and their (N,) int labels (None for
    unlabelled samples, which fill rows of `per_class` in order). Tiles are upscaled by an
    integer factor to at least GRID_MIN_TILE pixels.
    """
    labelled = all(labels is not None for _, labels in columns)
    if labelled:
        # Blocks only as wide as the largest class needs.
        largest = max(int(np.bincount(labels).max()) for _, labels in columns if len(labels))
        per_class = min(per_class, largest)
    size = columns[0][0].shape[1]
    factor = max(1, math.ceil(GRID_MIN_TILE / size))
    tile = size * factor
    gap = max(2, tile // 8)
    rows: list[int | None]
    if labelled:
        rows = sorted({int(c) for _, labels in columns for c in labels})
        picked = [[images[labels == c][:per_class] for c in rows] for images, labels in columns]
    else:
        count = max(math.ceil(len(images) / per_class) for images, _ in columns)
        rows = [None] * count
        picked = [
            [images[r * per_class : (r + 1) * per_class] for r in range(count)]
            for images, _ in columns
        ]
    block = per_class * tile
    mosaic = np.full(
        (len(rows) * tile + (len(rows) - 1) * gap, len(columns) * (block + gap) - gap, 3),
        255,
        dtype=np.uint8,
    )
    for col, blocks in enumerate(picked):
        for row, images in enumerate(blocks):
            for i, image in enumerate(images):
                top, left = row * (tile + gap), col * (block + gap) + i * tile
                big = image.repeat(factor, axis=0).repeat(factor, axis=1)
                mosaic[top : top + tile, left : left + tile] = big
    return Mosaic(mosaic, rows, tile + gap, block + gap)


def _thumbs(run: RunResults, cell: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    path = run.run_dir / "thumbs" / f"{cell}.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        return data["images"], (data["labels"] if "labels" in data.files else None)


def _class_name(label: int | None, class_names: list[str] | None) -> str:
    if label is None:
        return ""
    if class_names and label < len(class_names):
        return class_names[label]
    return f"class {label}"


def plot_sample_grid(run: RunResults, out_dir: Path) -> list[Path]:
    """grid.png: per model (sweeps) or variant (ablations), samples per class and per column.

    Sweep panels have one column per guidance scale; ablation panels one per training point.
    The same sample index is shown in every column (same class and initial noise).
    """
    plt = _pyplot()
    frame = run.records.copy()
    ablation = run.kind == "ablate"
    frame["series"] = frame["variant"] if ablation else _series_labels(frame)
    class_names = run.annotations.get("class_names")
    panels = []
    for series, group in frame.groupby("series", sort=False):
        columns, titles = [], []
        for _, record in group.iterrows():
            thumbs = _thumbs(run, record["cell"])
            if thumbs is not None:
                columns.append(thumbs)
                titles.append(
                    str(record["training_point"])
                    if ablation
                    else f"s = {record['guidance_scale']:g}"
                )
        if columns:
            panels.append((series, columns, titles))
    if not panels:
        return []
    mosaics = [(series, grid_mosaic(columns), titles) for series, columns, titles in panels]
    heights = [m.image.shape[0] for _, m, _ in mosaics]
    width = max(m.image.shape[1] for _, m, _ in mosaics)
    figure, axes = plt.subplots(
        len(mosaics),
        1,
        figsize=(max(4.0, width / 60), sum(heights) / 60 + 0.8 * len(mosaics)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (series, mosaic, titles) in zip(axes[:, 0], mosaics, strict=True):
        ax.imshow(mosaic.image, interpolation="nearest")
        ax.grid(False)
        ax.set_xticks([mosaic.column_pitch * (i + 0.5) for i in range(len(titles))], titles)
        ax.set_yticks(
            [mosaic.row_pitch * (i + 0.5) for i in range(len(mosaic.rows))],
            [_class_name(row, class_names) for row in mosaic.rows],
        )
        ax.set_title(str(series))
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
    figure.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "grid.png"
    from evalsuite.runtime.cache import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        figure.savefig(fh, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(figure)
    return [path]
