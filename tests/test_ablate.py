"""`evalsuite ablate`: the Table-1 layout end to end on tiny variants, spec validation (every
error names the spec file and key, before any work), and the zoo's shipped spec."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from evalsuite import zoo
from evalsuite.cli import main
from evalsuite.experiments import sweep as sweep_module
from evalsuite.experiments.ablate import load_spec
from evalsuite.models import UNetConfig, build_model, save_checkpoint
from evalsuite.pipeline import evaluate as evaluate_module
from evalsuite.runtime.errors import EvalsuiteError
from tests.helpers import TINY_DIFFUSION, TINY_UNET, random_batch

SHIPPED_SPEC = (
    Path(__file__).resolve().parents[1] / "evalsuite" / "zoo" / "assets" / "ablation.toml"
)
_load_inception_once = functools.cache(evaluate_module.load_inception)
# Variants and checkpoint steps the zoo build (zoo/build_zoo.sh) writes.
ZOO_VARIANTS = ("baseline", "addition", "plain_updown", "attention8", "rescale_residual")


@pytest.fixture(autouse=True)
def shared_inception(monkeypatch):
    monkeypatch.setattr(sweep_module, "load_inception", _load_inception_once)


def variant_checkpoint(path: Path, seed: int, **changes) -> Path:
    """A tiny class-conditional UNet with the architecture changes of a variant."""
    config = UNetConfig(**{**TINY_UNET, **changes}, class_cond=True, num_classes=4)
    model = build_model(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    save_checkpoint(path, model, config, TINY_DIFFUSION, kind="unet")
    return path


SPEC = """
title = "tiny ablation"
{baseline}
[sampling]
num_samples = 4
sampler = "ddim"
steps = "ddim2"
seed = 3

[evaluation]
reference = "reference.npz"
metrics = ["fid"]
bootstrap = 10

[[variant]]
name = "baseline"
description = "AdaGN"
checkpoints = {{ "1K" = "base_1k.pt", "2K" = "base_2k.pt" }}

[[variant]]
name = "addition"
checkpoints = {{ "1K" = "add_1k.pt", "2K" = "add_2k.pt" }}
"""


@pytest.fixture(scope="module")
def spec_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ablation")
    variant_checkpoint(folder / "base_1k.pt", 0)
    variant_checkpoint(folder / "base_2k.pt", 1)
    variant_checkpoint(folder / "add_1k.pt", 2, use_scale_shift_norm=False)
    variant_checkpoint(folder / "add_2k.pt", 3, use_scale_shift_norm=False)
    random_batch(folder / "reference.npz", 6, size=8)
    (folder / "spec.toml").write_text(SPEC.format(baseline=""))
    return folder


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def ablation_run(spec_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ablation"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_module, "load_inception", _load_inception_once)
        code, output = invoke(
            ["ablate", str(spec_folder / "spec.toml"), "--out", str(out), "--quiet"]
        )
    assert code == 0, output
    assert "2 variants x 2 training points (1K, 2K); baseline baseline" in output
    return out


def records_by_row(run_dir: Path) -> dict[tuple[str, str], dict]:
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    return {(r["variant"], r["training_point"]): r for r in map(json.loads, lines)}


def markdown_rows(path: Path) -> dict[str, list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return {"header": header, **rows}


def strip_interval(text: str) -> str:
    return text.replace("**", "").split(" ± ")[0]


def test_ablation_records_every_variant_and_point(ablation_run):
    records = records_by_row(ablation_run)
    assert set(records) == {(v, p) for v in ("baseline", "addition") for p in ("1K", "2K")}
    for record in records.values():
        assert record["kind"] == "ablate" and record["guidance_scale"] == 0.0
        assert record["fid"] > 0 and record["fid_ci_low"] <= record["fid_ci_high"]
        assert record["sfid"] is None and record["num_samples"] == 4
    config = json.loads((ablation_run / "config.json").read_text())
    assert config["annotations"]["baseline"] == "baseline"
    assert config["annotations"]["points"] == ["1K", "2K"]


def test_table1_has_baseline_absolute_and_differences(ablation_run):
    records = records_by_row(ablation_run)
    table = markdown_rows(ablation_run / "report" / "table1.md")
    # Only the architecture column that differs between the variants is shown.
    assert table["header"] == ["Variant", "AdaGN", "FID 1K ↓", "FID 2K ↓"]
    assert table["baseline"]["AdaGN"] == "✓" and table["addition"]["AdaGN"] == "✗"
    for point in ("1K", "2K"):
        base, other = records[("baseline", point)]["fid"], records[("addition", point)]["fid"]
        assert strip_interval(table["baseline"][f"FID {point} ↓"]) == f"{base:.2f}"
        difference = f"{other - base:+.2f}".replace("-", "\u2212")
        assert strip_interval(table["addition"][f"FID {point} ↓"]) == difference
        # The better variant at each point is in bold.
        better = "baseline" if base < other else "addition"
        assert table[better][f"FID {point} ↓"].startswith("**")
    csv = pd.read_csv(ablation_run / "report" / "table1.csv")
    assert list(csv["variant"]) == ["baseline", "addition"]
    assert list(csv["baseline"]) == [True, False]
    assert csv.loc[1, "fid@2K"] == records[("addition", "2K")]["fid"]
    latex = (ablation_run / "report" / "table1.tex").read_text()
    assert "\\checkmark" in latex and "$\\times$" in latex and "\\toprule" in latex
    assert "FID 1K $\\downarrow$" in latex
    for name in ("ablation_fid.png", "ablation_fid.pdf", "grid.png"):
        assert (ablation_run / "report" / name).stat().st_size > 5000, name
    assert "baseline@1K" in (ablation_run / "report" / "table4.md").read_text()


def test_absolute_option_and_changed_baseline(ablation_run, spec_folder, tmp_path):
    records = records_by_row(ablation_run)
    code, output = invoke(["report", str(ablation_run), "--absolute", "--out", str(tmp_path)])
    assert code == 0, output
    table = markdown_rows(tmp_path / "table1.md")
    other = records[("addition", "1K")]["fid"]
    assert strip_interval(table["addition"]["FID 1K ↓"]) == f"{other:.2f}"
    # A new baseline changes only the report: the rerun recomputes nothing.
    spec = spec_folder / "spec_addition.toml"
    spec.write_text(SPEC.format(baseline='baseline = "addition"'))
    before = (ablation_run / "records.jsonl").read_text()
    code, output = invoke(["ablate", str(spec), "--out", str(ablation_run), "--quiet"])
    assert code == 0, output
    assert "4 of 4 cells already finished" in output
    assert (ablation_run / "records.jsonl").read_text() == before
    table = markdown_rows(ablation_run / "report" / "table1.md")
    base = records[("baseline", "1K")]["fid"]
    assert strip_interval(table["addition"]["FID 1K ↓"]) == f"{other:.2f}"
    difference = f"{base - other:+.2f}".replace("-", "\u2212")
    assert strip_interval(table["baseline"]["FID 1K ↓"]) == difference


# (how the valid spec is broken, the message expected after "SPEC: ")
BAD_SPECS = [
    (("prepend", 'colour = "red"\n'), "colour: unknown key"),
    (
        ("replace", "num_samples = 4", "num_samples = 'many'"),
        "sampling.num_samples: expected an integer, got a string",
    ),
    (("replace", 'sampler = "ddim"', "sampler = 'euler'"), "sampling.sampler: expected one of"),
    (
        ("replace", "seed = 3", "seed = 3\nguidance_scale = -1"),
        "sampling.guidance_scale: expected a finite number >= 0",
    ),
    (("replace", '"reference.npz"', '"missing.npz"'), "evaluation.reference: file"),
    (
        ("replace", 'metrics = ["fid"]', "metrics = ['sfid']"),
        "evaluation.metrics: must include fid",
    ),
    (
        ("replace", 'metrics = ["fid"]', "metrics = ['fid', 'fad']"),
        "evaluation.metrics: unknown metric fad",
    ),
    (
        ("replace", "bootstrap = 10", "bootstrap = 1.5"),
        "evaluation.bootstrap: expected an integer, got a number",
    ),
    (("prepend", 'baseline = "nope"\n'), "baseline: 'nope' is not a variant"),
    (
        ("append", "[[variant]]\nname = 'baseline'\ncheckpoint = 'base_1k.pt'\n"),
        "variant[2].name: duplicate variant name 'baseline'",
    ),
    (
        ("append", "[[variant]]\nname = 'x'\nchekpoints = {}\n"),
        "variant[2].chekpoints: unknown key",
    ),
    (
        ("append", "[[variant]]\nname = 'x'\ncheckpoints = { '1K' = 'gone.pt' }\n"),
        "variant.x.checkpoints.1K: file",
    ),
    (
        (
            "append",
            "[[variant]]\nname = 'x'\ncheckpoint = 'a.pt'\ncheckpoints = { '1K' = 'b.pt' }\n",
        ),
        "variant.x: give either",
    ),
    (
        ("append", "[[variant]]\nname = 'x y'\ncheckpoint = 'base_1k.pt'\n"),
        "variant[2].name: expected a name",
    ),
    (
        ("append", "[[variant]]\nname = 'x'\ncheckpoint = 'base_1k.pt'\nflags = 7\n"),
        "variant.x.flags: expected a string, got an integer",
    ),
    (
        (
            "append",
            "[[variant]]\nname = 'x'\ncheckpoint = 'base_1k.pt'\n[variant.config]\nnum_chanels = 32\n",
        ),
        "variant.x.config: ",
    ),
    (
        (
            "append",
            "[[variant]]\nname = 'x'\ncheckpoint = 'base_1k.pt'\nflags = ''\npreset = 'y'\n",
        ),
        "variant.x.preset: give only one of",
    ),
    (("prepend", "title = [\n"), "not valid TOML"),
]


def broken_spec(change: tuple[str, ...]) -> str:
    text = SPEC.format(baseline="")
    if change[0] == "prepend":
        return change[1] + text
    if change[0] == "append":
        return text + "\n" + change[1]
    assert change[1] in text
    return text.replace(change[1], change[2], 1)


@pytest.mark.parametrize("change, message", BAD_SPECS)
def test_spec_errors_name_the_file_and_key_before_any_work(spec_folder, tmp_path, change, message):
    # Relative paths resolve against the spec's folder: keep the spec next to the checkpoints.
    spec = spec_folder / f"bad_{BAD_SPECS.index((change, message))}.toml"
    spec.write_text(broken_spec(change))
    out = tmp_path / "run"
    code, output = invoke(["ablate", str(spec), "--out", str(out)])
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert output.startswith(f"Error: {spec}: {message}"), output
    assert not out.exists()


def test_guided_ablation_needs_a_classifier_per_variant(spec_folder):
    spec = spec_folder / "guided.toml"
    spec.write_text(SPEC.format(baseline="").replace("seed = 3", "seed = 3\nguidance_scale = 1.0"))
    with pytest.raises(EvalsuiteError, match="variant.baseline: sampling.guidance_scale is 1"):
        load_spec(spec)


def test_config_table_builds_the_architecture(spec_folder):
    spec = spec_folder / "configured.toml"
    config = (
        "[variant.config]\nimage_size = 8\nnum_channels = 32\nnum_res_blocks = 1\n"
        "channel_mult = [1, 2]\nattention_resolutions = [4]\nnum_head_channels = 16\n"
        "resblock_updown = true\nlearn_sigma = true\nclass_cond = true\nnum_classes = 4\n"
        "diffusion_steps = 100\nnoise_schedule = 'cosine'\n"
    )
    spec.write_text(
        SPEC.format(baseline="") + "\n[[variant]]\nname = 'explicit'\n"
        "checkpoint = 'base_1k.pt'\n" + config
    )
    loaded = load_spec(spec)
    variant = loaded.variants[2]
    assert variant.checkpoints == {"final": str(spec_folder / "base_1k.pt")}
    assert "--resblock_updown True" in variant.flags and "--channel_mult 1,2" in variant.flags
    assert loaded.points == ("1K", "2K", "final")


@pytest.fixture
def fake_zoo(spec_folder, tmp_path, monkeypatch) -> Path:
    """A zoo folder with the shipped spec and tiny files under every name it lists."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    shutil.copy(SHIPPED_SPEC, folder / zoo.ABLATION_SPEC)
    for name in ZOO_VARIANTS:
        for step in (600, 1200):
            shutil.copy(spec_folder / "base_1k.pt", folder / f"ablation_{name}_step{step}.pt")
    shutil.copy(spec_folder / "reference.npz", folder / zoo.REFERENCE)
    monkeypatch.setattr(zoo, "ZOO_DIR", folder)
    monkeypatch.setattr(zoo, "REFERENCE_DIR", folder)
    return folder


def test_the_zoo_spec_is_valid(fake_zoo):
    spec = load_spec(fake_zoo / zoo.ABLATION_SPEC)
    assert [v.name for v in spec.variants] == list(ZOO_VARIANTS)
    assert spec.points == ("0.6K", "1.2K") and spec.baseline == "baseline"
    assert spec.evaluation["reference"] == str(fake_zoo / zoo.REFERENCE)
    assert spec.annotations()["class_names"][0] == "disc"
    rows = spec.sweep_config().rows
    assert len(rows) == 10 and rows[1].name == "baseline@1.2K"
    assert rows[1].model == str(fake_zoo / "ablation_baseline_step1200.pt")


def test_missing_zoo_files_are_the_zoo_errors(fake_zoo, tmp_path):
    (fake_zoo / "ablation_attention8_step1200.pt").unlink()
    code, output = invoke(["ablate", "--out", str(tmp_path / "run")])
    assert code == 2 and len(output.strip().splitlines()) == 2, output
    assert (
        "variant.attention8.checkpoints.1.2K: zoo file" in output and zoo.REBUILD_COMMAND in output
    )
    (fake_zoo / zoo.ABLATION_SPEC).unlink()
    code, output = invoke(["ablate", "--out", str(tmp_path / "run")])
    assert code == 2 and len(output.strip().splitlines()) == 1
    assert f"zoo file {fake_zoo / zoo.ABLATION_SPEC} is missing" in output
    assert not (tmp_path / "run").exists()
