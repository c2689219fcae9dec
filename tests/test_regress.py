"""`evalsuite regress`: baselines pass on an unchanged model, fail on a degraded one, refuse bad input.

End to end on a tiny UNet (8x8, 4 sampling steps, 8 samples); the reference statistics are those
of 16 samples of the same model under another seed, so the unchanged model scores close to the
reference and a model with noise added to its weights far from it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evalsuite.cli import main
from evalsuite.experiments.bootstrap import (
    SampleScorer,
    one_sided_bound,
    prepare_reference,
    replicates,
)
from evalsuite.experiments.regress import (
    Expectation,
    Tolerance,
    compare,
    load_baseline,
    parse_tolerances,
    write_baseline,
)
from evalsuite.metrics import frechet_distance, gaussian_stats
from evalsuite.models import save_checkpoint
from evalsuite.models.checkpoint import load_checkpoint
from evalsuite.pipeline.evaluate import MetricOptions, ReferenceSide, score_features
from evalsuite.pipeline.featureset import FeatureSet
from evalsuite.runtime.cache import sha256_file
from tests.helpers import tiny_unet

STEPS = "4"
NUM_SAMPLES = "8"


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model, reference statistics of its samples (seed 100) and a baseline made by --init."""
    folder = tmp_path_factory.mktemp("regress")
    model = tiny_unet(folder / "unet.pt")
    code, output = run(
        ["sample", "--quiet", "--model", str(model), "--steps", STEPS, "--num-samples", "16"]
        + ["--seed", "100", "--out", str(folder / "reference_samples.npz")]
    )
    assert code == 0, output
    code, output = run(
        ["ref-stats", "--quiet", str(folder / "reference_samples.npz")]
        + ["--out", str(folder / "reference.npz")]
    )
    assert code == 0, output
    baseline = folder / "baseline.toml"
    code, output = run(
        ["regress", "--init", str(baseline), "--quiet", "--model", str(model)]
        + ["--reference", str(folder / "reference.npz"), "--steps", STEPS]
        + ["--num-samples", NUM_SAMPLES, "--seed", "0", "--metrics", "fid,kid,pr"]
        + ["--tolerance", "fid=rel:0.05,kid=ci:0.95", "--tolerance", "precision=abs:0.2"]
        + ["--kid-subsets", "20", "--bootstrap-resamples", "50"]
    )
    assert code == 0, output
    return {"folder": folder, "model": model, "baseline": baseline}


def edited_copy(world: dict[str, Path], name: str, edits: list[tuple[str, str]]) -> Path:
    """A copy of the baseline next to it with regex substitutions applied (each must match)."""
    text = world["baseline"].read_text()
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
        assert count == 1, pattern
    path = world["folder"] / name
    path.write_text(text)
    return path


def degraded_checkpoint(source: Path, target: Path, noise: float = 1.0) -> Path:
    """The model with Gaussian noise of std `noise` added to every weight."""
    loaded = load_checkpoint(source, "unet")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in loaded.model.parameters():
            param.add_(noise * torch.randn(param.shape, generator=generator))
    save_checkpoint(target, loaded.model, loaded.model_config, loaded.diffusion_config, kind="unet")
    return target


def test_init_records_protocol_and_hashes(world):
    baseline = load_baseline(world["baseline"])
    assert baseline.model.path == "unet.pt"  # relative to the baseline's folder
    assert baseline.model.sha256 == sha256_file(world["model"])
    assert baseline.reference.sha256 == sha256_file(world["folder"] / "reference.npz")
    meta = json.loads(str(np.load(world["folder"] / "reference.npz")["evalsuite_meta"]))
    assert baseline.evaluation.inception_weights_sha256 == meta["weights_sha256"]
    assert baseline.sampling.num_samples == 8 and baseline.sampling.seed == 0
    assert baseline.sampling.steps == STEPS
    assert list(baseline.metrics) == ["fid", "precision", "recall", "kid"]
    assert baseline.metrics["fid"].tolerance == Tolerance("rel", 0.05)
    assert baseline.metrics["precision"].tolerance == Tolerance("abs", 0.2)
    assert baseline.metrics["recall"].tolerance == Tolerance("abs", 0.05)  # default
    kid = baseline.metrics["kid"]
    assert kid.tolerance == Tolerance("ci", 0.95)
    assert kid.bound is not None and kid.bound > kid.expected


def test_unchanged_model_passes_with_identical_metrics(world, tmp_path):
    json_path, markdown_path = tmp_path / "result.json", tmp_path / "summary.md"
    markdown_path.write_text("earlier summary\n")
    code, output = run(
        ["regress", str(world["baseline"]), "--quiet"]
        + ["--json", str(json_path), "--markdown", str(markdown_path)]
    )
    assert code == 0, output
    assert "FAIL" not in output and output.count("PASS") >= 4
    assert "bitwise identical" in output
    result = json.loads(json_path.read_text())
    assert result["passed"] is True and result["samples_identical_to_baseline"] is True
    baseline = load_baseline(world["baseline"])
    # Same checkpoint, seeds and machine: the metrics of the two runs are identical, bit for bit.
    for name, expectation in baseline.metrics.items():
        assert result["metrics"][name]["got"] == expectation.expected, name
        assert result["metrics"][name]["status"] == "PASS"
    markdown = markdown_path.read_text()
    assert markdown.startswith("earlier summary\n")  # appended, as CI job summaries need
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0].split("|")[1:-1] == [
        " metric ",
        " expected ",
        " got ",
        " delta ",
        " tolerance ",
        " status ",
    ]
    assert [row.split("|")[1].strip() for row in rows[1:]] == list(baseline.metrics)
    assert all("PASS" in row.split("|")[-2] for row in rows[1:])


def test_degraded_model_fails_and_update_records_it(world, tmp_path):
    degraded = degraded_checkpoint(world["model"], world["folder"] / "degraded.pt")
    # Only the checkpoint differs (path and its hash); FID is left out to keep the test fast.
    path = edited_copy(
        world,
        "degraded.toml",
        [
            (r'^path = "unet.pt"', 'path = "degraded.pt"'),
            (r'^sha256 = "\w+"', f'sha256 = "{sha256_file(degraded)}"'),
            (r"^\[metrics\.fid\]\nexpected = .*\nrel = .*\n", ""),
        ],
    )
    json_path = tmp_path / "result.json"
    code, output = run(["regress", str(path), "--quiet", "--json", str(json_path)])
    assert code == 1, output
    assert "FAIL" in output and "REGRESSION" in output
    result = json.loads(json_path.read_text())
    assert result["passed"] is False
    assert result["metrics"]["kid"]["status"] == "FAIL"
    assert result["metrics"]["kid"]["got"] > result["metrics"]["kid"]["allowed"]
    assert result["samples_identical_to_baseline"] is False

    # --update after an intended change: new expected values, tolerances and notes kept.
    text = path.read_text().replace(
        "abs = 0.2\n", 'abs = 0.2\nnote = "tiny N: one sample is 0.125"\n'
    )
    path.write_text(text)
    code, output = run(["regress", "--update", str(path), "--quiet"])
    assert code == 0, output
    updated = load_baseline(path)
    for name, entry in result["metrics"].items():
        assert updated.metrics[name].expected == entry["got"], name
    assert updated.metrics["precision"].tolerance == Tolerance("abs", 0.2)
    assert updated.metrics["precision"].note == "tiny N: one sample is 0.125"
    assert updated.metrics["kid"].tolerance == Tolerance("ci", 0.95)
    assert updated.metrics["kid"].bound >= updated.metrics["kid"].expected
    assert updated.model.sha256 == sha256_file(degraded)


def test_changed_checkpoint_hash_is_refused_then_update_records_it(world):
    changed = degraded_checkpoint(world["model"], world["folder"] / "changed.pt", noise=1e-3)
    path = edited_copy(
        world,
        "changed.toml",
        [
            (r'^path = "unet.pt"', 'path = "changed.pt"'),
            (r"^\[metrics\.fid\]\nexpected = .*\nrel = .*\n", ""),
        ],
    )
    code, output = run(["regress", str(path), "--quiet"])
    assert code == 2, output
    assert len(error_lines(output)) == 1
    assert "no longer matches the model checkpoint's hash" in output
    assert "--update" in output and "FAIL" not in output and "PASS" not in output

    code, output = run(["regress", "--update", str(path), "--quiet"])
    assert code == 0, output
    assert load_baseline(path).model.sha256 == sha256_file(changed)


def _reference_with_other_weights(world: dict[str, Path]) -> Path:
    source = world["folder"] / "reference.npz"
    with np.load(source) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays["evalsuite_meta"]))
    meta["weights_sha256"] = "0" * 64
    arrays["evalsuite_meta"] = np.array(json.dumps(meta))
    target = world["folder"] / "reference_other_weights.npz"
    np.savez(target, **arrays)
    return target


@pytest.mark.parametrize(
    "case",
    ["unknown_key", "unknown_metric", "missing_field", "missing_checkpoint", "ref_weights"],
)
def test_unusable_baselines_exit_2_with_one_line(world, case):
    if case == "ref_weights":
        other = _reference_with_other_weights(world)
        edits = [
            (r'^path = "reference.npz"', f'path = "{other.name}"'),
            (r'(\[reference\]\npath = .*\n)sha256 = "\w+"', rf'\1sha256 = "{sha256_file(other)}"'),
        ]
        expected = "computed with Inception weights 000000000000"
    else:
        edits, expected = {
            "unknown_key": ([(r"^seed = 0\n", "seed = 0\nstepz = 3\n")], "`sampling.stepz`"),
            "unknown_metric": ([(r"^\[metrics\.kid\]", "[metrics.fidd]")], "`metrics.fidd`"),
            "missing_field": ([(r"^seed = 0\n", "")], "missing key `sampling.seed`"),
            "missing_checkpoint": (
                [(r'^path = "unet.pt"', 'path = "gone.pt"')],
                "gone.pt (`model.path` = 'gone.pt') does not exist",
            ),
        }[case]
    path = edited_copy(world, f"{case}.toml", edits)
    code, output = run(["regress", str(path), "--quiet"])
    assert code == 2, output
    assert len(error_lines(output)) == 1, output
    assert expected in output


def test_protocol_options_need_init(world):
    code, output = run(["regress", str(world["baseline"]), "--num-samples", "5"])
    assert code == 2
    assert "--num-samples only applies with --init" in output
    code, output = run(["regress", "--init", str(world["baseline"]), "--quiet"])
    assert code == 2 and "exists" in output and "--update" in output


def test_bad_toml_and_missing_file_exit_2(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("format = \n")
    code, output = run(["regress", str(broken)])
    assert code == 2 and "not valid TOML" in output
    code, output = run(["regress", str(tmp_path / "absent.toml")])
    assert code == 2 and "--init" in output


# --- library pieces: bootstrap shortcuts, bounds, verdicts, file round trip -------------------


def _small_sides(rng: np.random.Generator, num_samples: int, dim: int):
    """Random small-dimensional features standing in for Inception features (shapes only)."""
    sample = FeatureSet(
        pool=rng.standard_normal((num_samples, dim)).astype(np.float32),
        spatial=rng.standard_normal((num_samples, dim - 3)).astype(np.float32) + 0.5,
        logits=None,
    )
    reference_pool = (1.3 * rng.standard_normal((3 * num_samples, dim)) + 0.2).astype(np.float32)
    reference_spatial = rng.standard_normal((3 * num_samples, dim - 3)).astype(np.float32)
    reference = ReferenceSide(
        reference=None,
        mode="recompute",
        pool_stats=gaussian_stats(reference_pool),
        spatial_stats=gaussian_stats(reference_spatial),
        pool=reference_pool,
        num_reference=3 * num_samples,
    )
    return sample, reference


@pytest.mark.parametrize("num_samples, dim", [(10, 24), (40, 8)])
def test_bootstrap_shortcuts_equal_scoring_each_resample(num_samples, dim):
    rng = np.random.default_rng(0)
    sample, reference = _small_sides(rng, num_samples, dim)
    options = MetricOptions(kid_subsets=7, kid_subset_size=5, kid_seed=3)
    rows = rng.integers(0, num_samples, size=(3, num_samples))
    names = ("fid", "sfid", "kid", "precision", "recall")
    groups = ("fid", "sfid", "kid", "pr")
    scorer = SampleScorer(sample, prepare_reference(reference, groups, options))
    values = replicates(scorer, rows, names)
    for index, resample in enumerate(rows):
        resampled = FeatureSet(sample.pool[resample], sample.spatial[resample], None)
        direct = score_features(resampled, reference, ("fid", "sfid", "kid", "pr"), options)
        for name in names:
            # FID/sFID: with N < D the evaluator route takes square roots of D - N + 1 rounding
            # residues of zero eigenvalues (~1e-8 each); the Gram route has none.
            rtol = 1e-6 if name in ("fid", "sfid") else 1e-9
            np.testing.assert_allclose(values[name][index], direct[name], rtol=rtol)
    # The shortcut is exact, not an approximation that happens to agree on one resample.
    assert len(set(values["fid"].tolist())) == 3
    assert len(set(values["kid"].tolist())) == 3
    np.testing.assert_allclose(
        values["fid"][0],
        frechet_distance(
            sample=gaussian_stats(sample.pool[rows[0]]), reference=reference.pool_stats
        ),
        rtol=1e-6,
    )


def test_bootstrap_bound_direction_and_centring():
    spread = np.linspace(-1.0, 1.0, 201)
    assert one_sided_bound(10.0, spread, 0.95, lower_is_better=True) == pytest.approx(10.9)
    assert one_sided_bound(0.5, spread / 10, 0.95, lower_is_better=False) == pytest.approx(0.41)
    # Resampling bias (replicates shifted away from the point estimate) does not move the bound.
    assert one_sided_bound(10.0, spread + 7.0, 0.95, lower_is_better=True) == pytest.approx(10.9)
    # Never tighter than the point estimate itself.
    assert one_sided_bound(10.0, np.zeros(5), 0.95, lower_is_better=True) == 10.0


@pytest.mark.parametrize(
    "metric, tolerance, bound, got, status",
    [
        ("fid", Tolerance("abs", 1.0), None, 10.9, "PASS"),
        ("fid", Tolerance("abs", 1.0), None, 11.1, "FAIL"),
        ("fid", Tolerance("abs", 1.0), None, 8.9, "BETTER"),
        ("fid", Tolerance("rel", 0.1), None, 10.99, "PASS"),
        ("fid", Tolerance("rel", 0.1), None, 11.01, "FAIL"),
        ("fid", Tolerance("ci", 0.95), 12.0, 11.99, "PASS"),
        ("fid", Tolerance("ci", 0.95), 12.0, 12.01, "FAIL"),
        ("fid", Tolerance("ci", 0.95), 12.0, 7.99, "BETTER"),
        ("precision", Tolerance("abs", 1.0), None, 9.1, "PASS"),
        ("precision", Tolerance("abs", 1.0), None, 8.9, "FAIL"),
        ("precision", Tolerance("abs", 1.0), None, 11.5, "BETTER"),
        ("inception_score", Tolerance("ci", 0.9), 9.0, 8.99, "FAIL"),
        ("fid", Tolerance("abs", 0.0), None, 10.0, "PASS"),
        ("fid", Tolerance("abs", 1.0), None, float("nan"), "FAIL"),
    ],
)
def test_compare_follows_metric_direction(metric, tolerance, bound, got, status):
    assert compare(metric, Expectation(10.0, tolerance, bound), got).status == status


def test_compare_without_values_to_fill():
    # A metric just added to a baseline (before --update fills expected or bound).
    for expectation in (
        Expectation(None, Tolerance("rel", 0.1)),
        Expectation(10.0, Tolerance("ci", 0.95), None),
    ):
        comparison = compare("fid", expectation, 12.0)
        assert comparison.allowed is None and comparison.status == "PASS"


BASELINE_TEXT = """\
format = "evalsuite-regress-baseline"
version = 1
description = 'CI "shapes" baseline, ünïcode ok'

[model]
path = "zoo:cond_unet.pt"
sha256 = "aa"
architecture = "embedded"

[classifier]
path = "../models/classifier.pt"
sha256 = "bb"
architecture = "flags:--image_size 8 --classifier_width 32"

[sampling]
num_samples = 300
sampler = "ddim"
steps = "ddim25"
eta = 0.0
guidance_scale = 2
classes = "balanced"
seed = 17
precision = "fp32"
clip_denoised = true

[reference]
path = "ref.npz"
sha256 = "cc"
ref_stats = "stored"

[evaluation]
inception_weights_sha256 = "dd"
pr_k = 3
is_split_size = 5000
kid_subsets = 50
kid_subset_size = 300
kid_seed = 1
fid_method = "eigh"
bootstrap_resamples = 100
bootstrap_seed = 2

[metrics.fid]
expected = 12.5
rel = 0.05
note = "FID at N=300 is biased upwards"

[metrics.kid]
expected = 1.25e-3
ci = 0.95
bound = 2.5e-3
"""


def test_baseline_file_round_trip(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text(BASELINE_TEXT)
    baseline = load_baseline(path)
    assert baseline.description == 'CI "shapes" baseline, ünïcode ok'
    assert baseline.classifier.load_arguments() == {
        "flags": "--image_size 8 --classifier_width 32",
        "preset": None,
    }
    assert baseline.sampling.guidance_scale == 2.0 and baseline.sampling.classes == "balanced"
    assert baseline.evaluation.kid_subset_size == 300
    assert baseline.metrics["kid"] == Expectation(1.25e-3, Tolerance("ci", 0.95), 2.5e-3)
    assert baseline.metric_groups == ("fid", "kid")
    write_baseline(baseline)
    again = load_baseline(path)
    assert again == baseline
    assert path.read_text().startswith("# evalsuite regression baseline")


@pytest.mark.parametrize(
    "edit, message",
    [
        (("rel = 0.05", "rel = 0.05\nabs = 1.0"), "exactly one tolerance"),
        (("ci = 0.95", "ci = 1.5"), "confidence level"),
        (("bound = 2.5e-3\n", ""), "no `bound`"),
        (('format = "evalsuite-regress-baseline"', 'format = "other"'), "`format`"),
        (("num_samples = 300", 'num_samples = "300"'), "expected an integer"),
        (('sampler = "ddim"', 'sampler = "euler"'), "--sampler"),
        (('architecture = "embedded"', 'architecture = "mystery"'), "model.architecture"),
        (('ref_stats = "stored"', 'ref_stats = "always"'), "reference.ref_stats"),
    ],
)
def test_invalid_baseline_values_are_named(tmp_path, edit, message):
    path = tmp_path / "b.toml"
    path.write_text(BASELINE_TEXT.replace(*edit))
    from evalsuite.runtime.errors import EvalsuiteError

    with pytest.raises(EvalsuiteError, match=re.escape(message)):
        load_baseline(path)


def test_update_mode_accepts_missing_values(tmp_path):
    path = tmp_path / "b.toml"
    text = BASELINE_TEXT.replace('sha256 = "aa"\n', "").replace("expected = 12.5\n", "")
    path.write_text(text.replace("bound = 2.5e-3\n", ""))
    baseline = load_baseline(path, for_update=True)
    assert baseline.model.sha256 is None and baseline.metrics["fid"].expected is None
    from evalsuite.runtime.errors import EvalsuiteError

    with pytest.raises(EvalsuiteError, match="missing key `model.sha256`"):
        load_baseline(path)


def test_parse_tolerances():
    assert parse_tolerances(["fid=rel:0.05,kid=ci:0.9", "is=abs:2"]) == {
        "fid": Tolerance("rel", 0.05),
        "kid": Tolerance("ci", 0.9),
        "inception_score": Tolerance("abs", 2.0),
    }
    from evalsuite.runtime.errors import EvalsuiteError

    for bad in ("fid", "fid=rel", "fid=huge:1", "fidd=rel:0.1"):
        with pytest.raises(EvalsuiteError, match="--tolerance"):
            parse_tolerances([bad])


def test_relative_paths_start_at_the_baseline_folder(tmp_path):
    from evalsuite.experiments.regress import path_entry, resolve_path

    (tmp_path / "ci").mkdir()
    baseline = tmp_path / "ci" / "b.toml"
    entry = path_entry(str(tmp_path / "models" / "m.pt"), baseline)
    assert entry == "../models/m.pt"
    assert resolve_path(entry, baseline).resolve() == (tmp_path / "models" / "m.pt").resolve()
    assert path_entry("zoo:cond_unet.pt", baseline) == "zoo:cond_unet.pt"
    shutil.rmtree(tmp_path / "ci")


def test_added_sampling_keys_are_optional_in_older_files(tmp_path, monkeypatch):
    from evalsuite.experiments.regress import baseline as baseline_format
    from evalsuite.runtime.errors import EvalsuiteError

    path = tmp_path / "b.toml"
    path.write_text(BASELINE_TEXT.replace("clip_denoised = true\n", ""))
    with pytest.raises(EvalsuiteError, match="missing key `sampling.clip_denoised`"):
        load_baseline(path)
    # A key listed as added after version 1 takes its default when a file predates it.
    added = (*baseline_format.ADDED_SAMPLING_KEYS, "clip_denoised")
    monkeypatch.setattr(baseline_format, "ADDED_SAMPLING_KEYS", added)
    assert load_baseline(path).sampling.clip_denoised is True


def test_written_baseline_is_plain_toml_with_the_header(tmp_path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = tmp_path / "b.toml"
    path.write_text(BASELINE_TEXT)
    baseline = load_baseline(path)
    write_baseline(baseline)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# evalsuite regression baseline. Check:  evalsuite regress b.toml\n")
    written = tomllib.loads(text)
    original = tomllib.loads(BASELINE_TEXT)
    original["sampling"]["guidance_scale"] = 2.0  # an integer in the hand-written file
    assert written == original
    # Absent values (no classifier note, no bound of a rel tolerance) are left out, not null.
    assert "bound" not in written["metrics"]["fid"] and "provenance" not in written


# --- regress --samples: a batch made by `evalsuite sample` instead of regenerating -----------


def _sample_batch(world: dict[str, Path], path: Path, *extra: str) -> Path:
    args = ["--num-samples", NUM_SAMPLES, "--seed", "0", "--steps", STEPS, *extra]
    code, output = run(
        ["sample", "--quiet", "--model", str(world["model"]), *args, "--out", str(path)]
    )
    assert code == 0, output
    return path


def test_samples_batch_scores_like_the_regenerating_run(world, tmp_path):
    batch = _sample_batch(world, tmp_path / "s.npz", "--batch-size", "3")
    results = {}
    for name, extra in (("given", ["--samples", str(batch)]), ("regenerated", [])):
        json_path = tmp_path / f"{name}.json"
        code, output = run(
            ["regress", str(world["baseline"]), "--quiet", "--json", str(json_path), *extra]
        )
        assert code == 0, output
        assert ("scored the sample batch" in output) == (name == "given")
        results[name] = json.loads(json_path.read_text())
    given, regenerated = results["given"], results["regenerated"]
    assert given["samples_batch"] == str(batch) and "samples_batch" not in regenerated
    assert given["samples_sha256"] == regenerated["samples_sha256"]
    assert given["samples_identical_to_baseline"] is True
    for name, entry in regenerated["metrics"].items():
        assert given["metrics"][name]["got"] == entry["got"], name


@pytest.mark.parametrize(
    "case, message",
    [
        ("seed", "sampling.seed is 1 in mismatch.json but 0"),
        ("steps", "sampling.steps is '5' in mismatch.json but '4'"),
        ("num_samples", "sampling.num_samples is 6 in mismatch.json but 8"),
        ("model", "model.sha256 is"),
        ("no_sidecar", "no mismatch.json next to it"),
    ],
)
def test_samples_batch_of_another_protocol_exits_2_naming_it(world, tmp_path, case, message):
    path = tmp_path / "mismatch.npz"
    if case == "model":
        other = tiny_unet(tmp_path / "other.pt", seed=5)
        code, output = run(
            ["sample", "--quiet", "--model", str(other), "--num-samples", NUM_SAMPLES]
            + ["--seed", "0", "--steps", STEPS, "--out", str(path)]
        )
        assert code == 0, output
    else:
        extra = {
            "seed": ["--seed", "1"],
            "steps": ["--steps", "5"],
            "num_samples": ["--num-samples", "6"],
            "no_sidecar": [],
        }[case]
        _sample_batch(world, path, *extra)
        if case == "no_sidecar":
            path.with_suffix(".json").unlink()
    code, output = run(["regress", str(world["baseline"]), "--quiet", "--samples", str(path)])
    assert code == 2, output
    assert len(error_lines(output)) == 1, output
    assert message in output
    assert "PASS" not in output and "FAIL" not in output


def test_samples_only_for_a_check(world, tmp_path):
    code, output = run(["regress", "--update", str(world["baseline"]), "--samples", "s.npz"])
    assert code == 2 and "--samples scores a batch for a check" in output


def test_classifier_free_guided_baseline_records_guidance_and_passes(world, tmp_path):
    # A CFG cell: init records guidance = "cfg" in [sampling], the check regenerates with CFG
    # (identical metrics), and the same baseline under the classifier default would differ.
    model = tiny_unet(tmp_path / "cfg.pt", null_class=True)
    baseline = tmp_path / "cfg.toml"
    common = [
        "--quiet",
        "--model",
        str(model),
        "--reference",
        str(world["folder"] / "reference.npz"),
    ]
    code, output = run(
        ["regress", "--init", str(baseline), *common, "--guidance", "cfg", "--guidance-scale", "3"]
        + ["--steps", STEPS, "--num-samples", NUM_SAMPLES, "--metrics", "fid,pr"]
    )
    assert code == 0, output
    loaded = load_baseline(baseline)
    assert (loaded.sampling.guidance, loaded.sampling.guidance_scale) == ("cfg", 3.0)
    assert 'guidance = "cfg"' in baseline.read_text()
    code, output = run(["regress", str(baseline), "--quiet", "--json", str(tmp_path / "r.json")])
    assert code == 0, output
    assert "guidance=cfg:3" in output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metrics"]["fid"]["got"] == loaded.metrics["fid"].expected
    # Without a null class, --guidance cfg is refused in one line.
    code, output = run(
        ["regress", "--init", str(tmp_path / "bad.toml"), "--quiet", "--model", str(world["model"])]
        + ["--reference", str(world["folder"] / "reference.npz"), "--guidance", "cfg"]
        + ["--guidance-scale", "2", "--steps", STEPS, "--num-samples", NUM_SAMPLES]
    )
    assert code == 2 and len(error_lines(output)) == 1 and "null" in output, output
    assert not (tmp_path / "bad.toml").exists()
