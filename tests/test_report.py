"""`evalsuite report`: table layouts and formats (Markdown, LaTeX, CSV round trip), figures, the
sample grid, and bad run directories. Runs are written by hand (config.json + records.jsonl), so
no sampling or Inception is involved and every expected value is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from evalsuite.cli import main
from evalsuite.experiments.report import grid_mosaic
from evalsuite.experiments.sweep import open_run_dir
from evalsuite.models import UNetConfig, config_to_dict
from tests.helpers import TINY_UNET

# (model, scale) -> FID, sFID, IS, precision, recall, class agreement. Best per column:
# FID cond_guided@1 (4.59), sFID uncond@0 (6.0), IS cond_guided@4, precision cond_guided@4,
# recall uncond@0, agreement cond_guided@4.
VALUES = {
    ("uncond", 0.0): (26.21, 6.0, 39.7, 0.61, 0.63, 0.10),
    ("uncond", 1.0): (33.03, 6.99, 32.92, 0.56, 0.62, 0.30),
    ("uncond", 4.0): (12.0, 10.4, 95.41, 0.76, 0.44, 0.70),
    ("cond_guided", 0.0): (10.94, 6.02, 100.98, 0.69, 0.6, 0.50),
    ("cond_guided", 1.0): (4.59, 6.25, 186.7, 0.82, 0.52, 0.80),
    ("cond_guided", 4.0): (9.11, 10.93, 283.92, 0.88, 0.32, 0.95),
}
KEYS = ("fid", "sfid", "inception_score", "precision", "recall", "class_agreement")


def unet_config(**changes) -> dict:
    return config_to_dict(UNetConfig(**{**TINY_UNET, **changes}, class_cond=True, num_classes=4))


def write_run(
    run_dir: Path,
    records: list[dict],
    *,
    kind: str = "sweep",
    models: list[dict] | None = None,
    annotations: dict | None = None,
    grid: dict | None = None,
) -> Path:
    names = list(dict.fromkeys(r["model"] for r in records))
    identity = {
        "kind": kind,
        "grid": grid
        or {
            "scales": sorted({r["guidance_scale"] for r in records}),
            "samplers": ["ddim"],
            "steps": ["ddim25"],
        },
        "models": models or [{"name": n, "model": {"config": unet_config()}} for n in names],
    }
    open_run_dir(run_dir, identity, {"annotations": annotations or {}})
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def sweep_records(with_intervals: bool = True) -> list[dict]:
    records = []
    for (model, scale), values in VALUES.items():
        record = {
            "cell": f"{model}_ddim-ddim25_s{scale:g}",
            "model": model,
            "variant": None,
            "training_point": None,
            "sampler": "ddim",
            "steps": "ddim25",
            "guidance_scale": scale,
            "num_samples": 200,
        }
        for key, value in zip(KEYS, values, strict=True):
            record[key] = value
            if with_intervals:
                # Half-widths: 1% of the value, so ± 0.26 for FID 26.21 etc.
                record[f"{key}_ci_low"] = value * 0.99
                record[f"{key}_ci_high"] = value * 1.01
        records.append(record)
    return records


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def markdown_table(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.fixture
def sweep_run(tmp_path) -> Path:
    return write_run(tmp_path / "run", sweep_records())


def test_table4_markdown_layout(sweep_run):
    code, output = invoke(["report", str(sweep_run)])
    assert code == 0, output
    table = markdown_table(sweep_run / "report" / "table4.md")
    assert table[0] == [
        "Model",
        "Guidance scale",
        "FID ↓",
        "sFID ↓",
        "IS ↑",
        "Precision ↑",
        "Recall ↑",
        "Class agreement ↑",
    ]
    body = table[2:]
    assert [row[:2] for row in body] == [
        ["uncond", "none"],
        ["uncond", "1"],
        ["uncond", "4"],
        ["cond_guided", "none"],
        ["cond_guided", "1"],
        ["cond_guided", "4"],
    ]
    assert body[0][2] == "26.21 ± 0.26" and body[0][5] == "0.610 ± 0.006"
    bold = {(r, c) for r, row in enumerate(body) for c, cell in enumerate(row) if "**" in cell}
    assert bold == {(4, 2), (0, 3), (5, 4), (5, 5), (0, 6), (5, 7)}
    assert body[4][2] == "**4.59 ± 0.05**"
    # The same table is printed at the end.
    assert "| cond_guided | 1 | **4.59 ± 0.05** |" in output


def test_table4_latex_is_booktabs_with_bold_best_and_arrows(sweep_run):
    invoke(["report", str(sweep_run)])
    latex = (sweep_run / "report" / "table4.tex").read_text()
    for command in ("\\begin{tabular}{llrrrrrr}", "\\toprule", "\\midrule", "\\bottomrule"):
        assert command in latex
    assert "FID $\\downarrow$" in latex and "IS $\\uparrow$" in latex
    assert "\\textbf{4.59 $\\pm$ 0.05}" in latex
    assert latex.count("\\textbf") == 6
    # Underscores in names are escaped; no raw Unicode that pdflatex would reject.
    assert "cond\\_guided" in latex and "cond_guided" not in latex.replace("cond\\_guided", "")
    assert all(ord(char) < 128 for char in latex)
    assert latex.count("\\\\") == 7


def test_csv_round_trips_the_numbers(sweep_run):
    invoke(["report", str(sweep_run)])
    frame = pd.read_csv(sweep_run / "report" / "table4.csv")
    assert list(frame["model"]) == [model for model, _ in VALUES]
    assert list(frame["guidance_scale"]) == [scale for _, scale in VALUES]
    for position, key in enumerate(KEYS):
        expected = [values[position] for values in VALUES.values()]
        assert list(frame[key]) == expected, key
        assert list(frame[f"{key}_ci_low"]) == [v * 0.99 for v in expected]
        assert list(frame[f"{key}_ci_high"]) == [v * 1.01 for v in expected]


def test_figures_are_written_as_png_and_pdf(sweep_run):
    code, output = invoke(["report", str(sweep_run)])
    assert code == 0, output
    for stem in ("tradeoff", "metrics_vs_scale"):
        for suffix in ("png", "pdf"):
            path = sweep_run / "report" / f"{stem}.{suffix}"
            assert path.stat().st_size > 5000, path
            assert f"wrote {path}" in output
    assert (sweep_run / "report" / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep_run / "report" / "tradeoff.pdf").read_bytes()[:5] == b"%PDF-"


def test_without_intervals_or_is_the_report_still_works(tmp_path):
    records = sweep_records(with_intervals=False)
    for record in records:
        record["inception_score"] = None
    run = write_run(tmp_path / "run", records)
    code, output = invoke(["report", str(run), "--out", str(tmp_path / "out")])
    assert code == 0, output
    header = markdown_table(tmp_path / "out" / "table4.md")[0]
    assert "IS ↑" not in header and "FID ↓" in header
    assert "±" not in (tmp_path / "out" / "table4.md").read_text()
    assert (tmp_path / "out" / "tradeoff.pdf").stat().st_size > 5000


def test_several_samplers_add_sampler_and_steps_columns(tmp_path):
    records = sweep_records()[:2]
    second = dict(records[0], cell="uncond_ddpm-250_s0", sampler="ddpm", steps="250")
    grid = {"scales": [0.0, 1.0], "samplers": ["ddim", "ddpm"], "steps": ["ddim25", "250"]}
    run = write_run(tmp_path / "run", [*records, second], grid=grid)
    code, output = invoke(["report", str(run)])
    assert code == 0, output
    table = markdown_table(run / "report" / "table4.md")
    assert table[0][:4] == ["Model", "Sampler", "Steps", "Guidance scale"]
    assert [row[1:4] for row in table[2:]] == [
        ["ddim", "ddim25", "none"],
        ["ddim", "ddim25", "1"],
        ["ddpm", "250", "none"],
    ]


def ablation_records() -> list[dict]:
    fids = {
        ("baseline", "700K"): 20.0,
        ("baseline", "1200K"): 15.0,
        ("wide", "700K"): 18.77,
        ("wide", "1200K"): 15.4,
        ("plain", "700K"): 22.5,
    }
    return [
        {
            "cell": f"{variant}@{point}_ddim-ddim25_s0",
            "model": f"{variant}@{point}",
            "variant": variant,
            "training_point": point,
            "sampler": "ddim",
            "steps": "ddim25",
            "guidance_scale": 0.0,
            "num_samples": 100,
            "fid": fid,
        }
        for (variant, point), fid in fids.items()
    ]


@pytest.fixture
def ablation_run(tmp_path) -> Path:
    architectures = {
        "baseline": unet_config(),
        "wide": unet_config(num_channels=64, num_head_channels=32),
        "plain": unet_config(resblock_updown=False),
    }
    records = ablation_records()
    models = [
        {
            "name": r["model"],
            "variant": r["variant"],
            "model": {"config": architectures[r["variant"]]},
        }
        for r in records
    ]
    annotations = {
        "baseline": "baseline",
        "variants": ["baseline", "wide", "plain"],
        "points": ["700K", "1200K"],
    }
    return write_run(
        tmp_path / "run", records, kind="ablate", models=models, annotations=annotations
    )


def test_table1_layout_with_differences(ablation_run):
    code, output = invoke(["report", str(ablation_run)])
    assert code == 0, output
    table = markdown_table(ablation_run / "report" / "table1.md")
    # Only the differing architecture columns appear (not depth, heads, attention, ...).
    assert table[0] == [
        "Variant",
        "Channels",
        "Channels per head",
        "BigGAN up/down",
        "FID 700K ↓",
        "FID 1200K ↓",
    ]
    assert table[2] == ["baseline", "32", "16", "✓", "20.00", "**15.00**"]
    assert table[3] == ["wide", "64", "32", "✓", "**−1.23**", "+0.40"]
    assert table[4] == ["plain", "32", "16", "✗", "+2.50", "—"]
    latex = (ablation_run / "report" / "table1.tex").read_text()
    assert "\\textbf{$-$1.23}" in latex and "$+$0.40" in latex and "$\\times$" in latex
    csv = pd.read_csv(ablation_run / "report" / "table1.csv")
    assert list(csv["fid@700K"]) == [20.0, 18.77, 22.5]
    assert csv["fid@1200K"].isna().tolist() == [False, False, True]
    assert list(csv["baseline"]) == [True, False, False]
    assert list(csv["channels"]) == [32, 64, 32]


def test_table1_absolute(ablation_run, tmp_path):
    code, output = invoke(["report", str(ablation_run), "--absolute", "--out", str(tmp_path / "o")])
    assert code == 0, output
    table = markdown_table(tmp_path / "o" / "table1.md")
    assert table[3][-2:] == ["**18.77**", "15.40"]
    assert (tmp_path / "o" / "ablation_fid.png").stat().st_size > 5000
    assert (tmp_path / "o" / "ablation_fid.pdf").stat().st_size > 5000


def test_grid_mosaic_places_classes_in_rows_and_scales_in_blocks():
    # Column s, class c: every pixel of the images of class c at scale s has value 10*s + c.
    labels = np.array([2, 0, 2, 1, 0, 2])
    columns = []
    for scale in range(3):
        images = np.zeros((6, 16, 16, 3), dtype=np.uint8)
        images[:] = (10 * scale + labels)[:, None, None, None]
        columns.append((images, labels))
    mosaic = grid_mosaic(columns, per_class=2)
    assert mosaic.rows == [0, 1, 2]
    tile = 48  # 16 px upscaled x3 to reach the 48 px minimum
    assert mosaic.row_pitch == tile + 6 and mosaic.column_pitch == 2 * tile + 6
    for scale in range(3):
        for row, label in enumerate(mosaic.rows):
            top, left = row * mosaic.row_pitch, scale * mosaic.column_pitch
            assert mosaic.image[top + 5, left + 5, 0] == 10 * scale + label
            # Class 1 has one sample: its second tile stays white.
            second = mosaic.image[top + 5, left + tile + 5, 0]
            assert second == (255 if label == 1 else 10 * scale + label)


def test_sample_grid_png_from_thumbnails(sweep_run):
    thumbs = sweep_run / "thumbs"
    thumbs.mkdir()
    rng = np.random.default_rng(0)
    for record in sweep_records():
        np.savez(
            thumbs / f"{record['cell']}.npz",
            images=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
            labels=np.repeat(np.arange(4), 2),
            indices=np.arange(8),
        )
    code, output = invoke(["report", str(sweep_run)])
    assert code == 0, output
    grid = sweep_run / "report" / "grid.png"
    assert grid.read_bytes()[:4] == b"\x89PNG" and grid.stat().st_size > 10000


@pytest.mark.parametrize("case", ["missing", "empty", "foreign", "no_records", "bad_config"])
def test_bad_run_directory_is_one_line_exit_2(tmp_path, case):
    run = tmp_path / "run"
    expected = {
        "missing": "no such run directory",
        "empty": "is not an evalsuite run directory",
        "foreign": "is not an evalsuite run directory",
        "no_records": "has no finished cells yet",
        "bad_config": "is not an evalsuite run configuration",
    }[case]
    if case != "missing":
        run.mkdir()
    if case == "foreign":
        (run / "results.csv").write_text("a,b\n1,2\n")
    if case == "no_records":
        write_run(run, sweep_records()[:1])
        (run / "records.jsonl").write_text("")
    if case == "bad_config":
        (run / "config.json").write_text(json.dumps({"format": "something-else"}))
    code, output = invoke(["report", str(run)])
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert expected in output
    assert not (run / "report").exists()
