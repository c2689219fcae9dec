"""`evalsuite sweep`: records per cell, resume without recomputation, refusals, zoo defaults, and
the fast bootstrap scorer against the plain metric functions.

End-to-end runs use tiny 8x8 models, a handful of samples and DDIM steps, and a 6-image random
reference; the Inception network is loaded once per test module (it is the real one).
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evalsuite import zoo
from evalsuite.cli import main
from evalsuite.experiments import sweep as sweep_module
from evalsuite.experiments.bootstrap import (
    FrechetGram,
    PrecisionRecallMatrices,
    SampleScorer,
    bootstrap_intervals,
    kth_neighbour_radii,
    paired_changes,
    prepare_reference,
)
from evalsuite.metrics import GaussianStats, frechet_distance, gaussian_stats, precision_recall
from evalsuite.pipeline import evaluate as evaluate_module
from evalsuite.pipeline.evaluate import MetricOptions, ReferenceSide, score_features
from evalsuite.pipeline.featureset import FeatureComputer, FeatureSet
from evalsuite.pipeline.reference import Reference
from evalsuite.pipeline.sample import BatchSampler
from evalsuite.runtime.cache import sha256_file
from evalsuite.runtime.errors import EvalsuiteError
from tests.helpers import random_batch, tiny_classifier, tiny_unet

_load_inception_once = functools.cache(evaluate_module.load_inception)


@pytest.fixture(autouse=True)
def shared_inception(monkeypatch):
    # The real Inception network, loaded once per module instead of once per command.
    monkeypatch.setattr(sweep_module, "load_inception", _load_inception_once)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sweep-inputs")
    return {
        "model": tiny_unet(folder / "cond.pt"),
        "uncond": tiny_unet(folder / "uncond.pt", class_cond=False, seed=3),
        "cfg": tiny_unet(folder / "cfg.pt", null_class=True, seed=5),
        "classifier": tiny_classifier(folder / "classifier.pt"),
        "judge": tiny_classifier(folder / "judge.pt", seed=7),
        "reference": random_batch(folder / "reference.npz", 6, size=8),
    }


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def sweep_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "--model",
        str(files["model"]),
        "--classifier",
        str(files["classifier"]),
        "--judge",
        str(files["judge"]),
        "--reference",
        str(files["reference"]),
        "--scales",
        "0,2",
        "--num-samples",
        "5",
        "--steps",
        "ddim3",
        "--bootstrap",
        "20",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_module, "load_inception", _load_inception_once)
        code, output = invoke(sweep_args(files, out, "--keep-samples"))
    assert code == 0, output
    return out


class CallCounter:
    """Wraps a method and counts its calls."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = 0
        original = getattr(owner, name)

        @functools.wraps(original)
        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_sweep_records_every_cell_with_all_metrics(finished_run, files):
    records = read_records(finished_run)
    assert [r["guidance_scale"] for r in records] == [0.0, 2.0]
    assert len({r["cell"] for r in records}) == 2
    for record in records:
        for key in ("fid", "sfid", "precision", "recall", "class_agreement"):
            assert isinstance(record[key], float), key
            low, high = record[f"{key}_ci_low"], record[f"{key}_ci_high"]
            assert low <= high and record[f"{key}_se"] >= 0, key
        # IS needs the Inception head, which the offline weights lack: recorded as unavailable.
        assert record["inception_score"] is None and "inception_score_ci_low" not in record
        assert record["fid"] > 0 and 0 <= record["precision"] <= 1
        assert record["bootstrap"] == 20 and record["num_samples"] == 5
        assert record["sampler"] == "ddim" and record["steps"] == "ddim3"
        assert record["model_sha256"] == sha256_file(files["model"])
        assert record["classifier_sha256"] == sha256_file(files["classifier"])
        for stage in ("sampling_seconds", "features_seconds", "metrics_seconds"):
            assert record[stage] > 0
    config = json.loads((finished_run / "config.json").read_text())
    identity = config["identity"]
    assert identity["grid"]["scales"] == [0.0, 2.0]
    assert identity["reference_sha256"] == sha256_file(files["reference"])
    assert identity["judge_sha256"] == sha256_file(files["judge"])
    assert len(identity["inception_sha256"]) == 64
    assert identity["models"][0]["model"]["sha256"] == sha256_file(files["model"])
    assert config["versions"]["evalsuite"]


def test_same_seed_gives_same_classes_and_noise_at_every_scale(finished_run):
    samples = sorted((finished_run / "samples").glob("*.npz"))
    assert len(samples) == 2
    (images0, labels0), (images2, labels2) = (
        (np.load(p)["arr_0"], np.load(p)["arr_1"]) for p in samples
    )
    np.testing.assert_array_equal(labels0, labels2)
    assert not np.array_equal(images0, images2)


def test_sweep_scores_the_kept_samples_against_the_reference(finished_run, files):
    # Precision/recall through the sweep's stored distances equal the evaluator's on the same
    # features (FID/sFID parity is checked on small synthetic features below: a 2048-d
    # Fréchet distance costs ~20 s per call on 2 cores).
    record = read_records(finished_run)[1]
    weights, extractor = _load_inception_once(None, "cpu")
    computer = FeatureComputer(extractor, weights.sha256, weights.has_logits, progress=False)
    reference = evaluate_module.load_reference(files["reference"])
    side = evaluate_module.resolve_reference(reference, ("pr",), "recompute", computer)
    samples = finished_run / "samples" / f"{record['cell']}.npz"
    features = computer.compute(evaluate_module.open_images(samples))
    expected = precision_recall(reference=side.pool, sample=features.pool)
    assert (record["precision"], record["recall"]) == (expected.precision, expected.recall)


def test_report_and_grid_written_at_the_end(finished_run):
    report = finished_run / "report"
    for name in ("table4.md", "table4.tex", "table4.csv", "tradeoff.png", "grid.png"):
        assert (report / name).stat().st_size > 0, name
    assert len(list((finished_run / "thumbs").glob("*.npz"))) == 2


def test_rerun_recomputes_nothing(finished_run, files, monkeypatch):
    before = (finished_run / "records.jsonl").read_text()
    sampling = CallCounter(monkeypatch, BatchSampler, "__call__")
    features = CallCounter(monkeypatch, FeatureComputer, "_extract")
    code, output = invoke(sweep_args(files, finished_run, "--keep-samples"))
    assert code == 0, output
    assert "2 of 2 cells already finished" in output
    assert sampling.calls == 0 and features.calls == 0
    assert (finished_run / "records.jsonl").read_text() == before


def test_interrupted_sweep_finishes_only_the_missing_cell(files, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = sweep_args(files, out, "--metrics", "fid", "--num-samples", "4", "--steps", "ddim2")
    real = sweep_module.bootstrap_intervals
    calls = []

    def interrupt_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sweep_module, "bootstrap_intervals", interrupt_second)
    code, output = invoke(args)
    assert code == 130, output
    assert len(read_records(out)) == 1
    first = read_records(out)[0]

    monkeypatch.setattr(sweep_module, "bootstrap_intervals", real)
    generated = []
    real_generate = sweep_module.generate
    monkeypatch.setattr(
        sweep_module,
        "generate",
        lambda models, settings, path, **kw: (
            generated.append(settings.guidance_scale) or real_generate(models, settings, path, **kw)
        ),
    )
    sampling = CallCounter(monkeypatch, BatchSampler, "__call__")
    features = CallCounter(monkeypatch, FeatureComputer, "_extract")
    code, output = invoke(args)
    assert code == 0, output
    records = read_records(out)
    assert [r["guidance_scale"] for r in records] == [0.0, 2.0]
    assert records[0] == first
    # Only the unfinished cell ran again, and its samples and features were reused.
    assert generated == [2.0] and records[1]["resumed"] is True
    assert sampling.calls == 0 and features.calls == 0
    assert not list((out / "samples").glob("*.npz"))


def test_different_config_into_the_same_directory_is_refused(finished_run, files):
    before = (finished_run / "records.jsonl").read_text()
    code, output = invoke(sweep_args(files, finished_run)[:-1] + ["--scales", "0,1", "--quiet"])
    assert code == 2
    assert len(output.strip().splitlines()) == 1
    assert "different configuration" in output and "grid.scales" in output
    assert (finished_run / "records.jsonl").read_text() == before


def test_foreign_directory_is_refused(files, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, output = invoke(sweep_args(files, tmp_path))
    assert code == 2 and "not an evalsuite run directory" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scales", "0,abc"], "'abc' is not a number"),
        (["--scales", "0,-1"], "not a finite scale >= 0"),
        (["--scales", "1,1"], "repeats a scale"),
        (["--scales", ""], "not a comma list"),
        (["--metrics", "fid,foo"], "unknown metric foo"),
        (["--sampler", "euler"], "'euler' is not one of ddpm, ddim"),
        (["--steps", "ddim7000"], "ddim7000"),
    ],
)
def test_bad_input_is_one_line_exit_2(files, tmp_path, extra, message):
    out = tmp_path / "run"
    code, output = invoke(sweep_args(files, out) + extra)
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert message in output
    assert not out.exists()


def test_guided_scale_without_classifier_is_refused(files, tmp_path):
    args = ["sweep", "--model", str(files["uncond"]), "--reference", str(files["reference"])]
    code, output = invoke([*args, "--scales", "0,1", "--out", str(tmp_path / "r")])
    assert code == 2 and "model uncond has no classifier" in output
    code, output = invoke(
        [*args, "--scales", "0", "--judge", str(files["judge"]), "--out", str(tmp_path / "r")]
    )
    assert code == 2 and "class agreement needs labelled samples" in output
    code, output = invoke(
        [*args, "--classifier", str(files["classifier"]), "--judge", str(files["classifier"])]
        + ["--scales", "1", "--out", str(tmp_path / "r")]
    )
    assert code == 2 and "is the classifier that guides sampling" in output
    assert not (tmp_path / "r").exists()


def test_model_without_reference_is_refused(files):
    code, output = invoke(["sweep", "--model", str(files["model"])])
    assert code == 2 and "--reference is required with --model" in output


@pytest.fixture
def fake_zoo(files, tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "zoo"
    folder.mkdir()
    shutil.copy(files["model"], folder / zoo.MODEL)
    shutil.copy(files["uncond"], folder / zoo.UNCOND_MODEL)
    shutil.copy(files["cfg"], folder / zoo.CFG_MODEL)
    shutil.copy(files["classifier"], folder / zoo.CLASSIFIER)
    shutil.copy(files["judge"], folder / zoo.JUDGE)
    shutil.copy(files["reference"], folder / zoo.REFERENCE)
    monkeypatch.setattr(zoo, "ZOO_DIR", folder)
    monkeypatch.setattr(zoo, "REFERENCE_DIR", folder)
    return folder


def test_no_model_sweeps_the_zoo_pair_with_its_judge(fake_zoo, tmp_path):
    out = tmp_path / "run"
    code, output = invoke(
        ["sweep", "--scales", "1", "--num-samples", "4", "--steps", "ddim2", "--metrics", "fid"]
        + ["--cfg-scales", "2", "--bootstrap", "0", "--out", str(out), "--quiet"]
    )
    assert code == 0, output
    assert "no --model: sweeping the zoo" in output and "judge.pt" in output
    records = read_records(out)
    assert [r["model"] for r in records] == ["unconditional", "conditional", "cfg"]
    assert [r["class_cond"] for r in records] == [False, True, True]
    assert [(r["guidance"], r["guidance_scale"]) for r in records] == [
        ("classifier", 1.0),
        ("classifier", 1.0),
        ("cfg", 2.0),
    ]
    assert {r["classifier_sha256"] for r in records[:2]} == {sha256_file(fake_zoo / zoo.CLASSIFIER)}
    assert records[2]["classifier_sha256"] is None
    assert all(isinstance(r["class_agreement"], float) for r in records)
    assert "fid_ci_low" not in records[0]
    config = json.loads((out / "config.json").read_text())
    assert config["annotations"]["class_names"][0] == "disc"


def test_missing_zoo_file_is_the_zoo_error(fake_zoo, tmp_path):
    (fake_zoo / zoo.UNCOND_MODEL).unlink()
    code, output = invoke(["sweep", "--out", str(tmp_path / "run")])
    assert code == 2
    assert len(output.strip().splitlines()) == 1
    assert f"zoo file {fake_zoo / zoo.UNCOND_MODEL} is missing" in output
    assert zoo.REBUILD_COMMAND in output


# --- the fast scorer of `evalsuite.experiments.bootstrap` against the plain metric functions ------------


def synthetic_features(dim: int, num_samples: int = 25, num_reference: int = 60):
    """Sample features and a reference side of dimension `dim` (the formulas do not need 2048)."""
    rng = np.random.default_rng(dim)
    reference_pool = rng.normal(size=(num_reference, dim)).astype(np.float32)
    reference_spatial = rng.normal(size=(num_reference, dim + 3)).astype(np.float32)
    sample = FeatureSet(
        pool=(rng.normal(size=(num_samples, dim)) * 1.2 + 0.3).astype(np.float32),
        spatial=rng.normal(size=(num_samples, dim + 3)).astype(np.float32),
        logits=rng.normal(size=(num_samples, 50)).astype(np.float32) * 3,
    )
    side = ReferenceSide(
        reference=Reference(path=Path("synthetic"), images=None),
        mode="stored",
        pool_stats=gaussian_stats(reference_pool),
        spatial_stats=gaussian_stats(reference_spatial),
        pool=reference_pool,
        num_reference=num_reference,
    )
    return sample, side


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_features(64)


# dim 64 > 25 samples: the Gram route; dim 16 < 25 samples: the covariance route.
@pytest.mark.parametrize("dim", [64, 16])
def test_scorer_equals_score_features(dim):
    sample, side = synthetic_features(dim)
    metrics = ("fid", "sfid", "is", "pr", "kid")
    options = MetricOptions(kid_subsets=5, kid_subset_size=10)
    expected = score_features(sample, side, metrics, options)
    agreement = np.arange(25) % 3 == 0
    scorer = SampleScorer(sample, prepare_reference(side, metrics, options), agreement)
    got = scorer.scores()
    for key in ("fid", "sfid"):
        # With fewer samples than dimensions, the eigh route takes square roots of the
        # rounding-level eigenvalues of a rank-deficient D x D matrix (~1e-8 relative here);
        # the Gram route has none (exact case: test_gram_route_has_the_closed_form).
        assert got[key] == pytest.approx(expected[key], rel=1e-7), key
    for key in ("inception_score", "inception_score_std", "precision", "recall", "kid", "kid_std"):
        assert got[key] == expected[key], key
    assert got["class_agreement"] == pytest.approx(9 / 25)


@pytest.mark.parametrize("index", [np.arange(12), np.array([0, 0, 0, 3, 5, 5, 7, 8, 8, 8, 9, 11])])
def test_gram_route_has_the_closed_form(index):
    # Reference N(0, I): FID = |mu_s|^2 + tr S_s + D - 2 sum_i sigma_i, where sigma_i are the
    # singular values of X_c / sqrt(n-1) (the square roots of the eigenvalues of S_s); the
    # second case is a bootstrap resample with repeated rows.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 30)) * rng.uniform(0.5, 2.0, size=30) + 0.7
    reference = GaussianStats(mu=np.zeros(30), sigma=np.eye(30), num=0)
    resampled = features[index]
    centred = (resampled - resampled.mean(axis=0)) / np.sqrt(len(index) - 1)
    singular_values = np.linalg.svd(centred, compute_uv=False)
    expected = (
        np.sum(resampled.mean(axis=0) ** 2)
        + np.sum(singular_values**2)
        + 30
        - 2 * np.sum(singular_values)
    )
    assert FrechetGram(features, reference).distance(index) == pytest.approx(expected, rel=1e-12)


def test_resampled_metrics_equal_the_metrics_of_the_resampled_set(synthetic):
    sample, side = synthetic
    index = np.random.default_rng(1).integers(0, 25, 25)
    resampled = sample.pool[index]
    gram = FrechetGram(sample.pool, side.pool_stats)
    direct = frechet_distance(sample=gaussian_stats(resampled), reference=side.pool_stats)
    assert gram.distance(index) == pytest.approx(direct, rel=1e-7)
    radii = kth_neighbour_radii(side.pool, 3)
    matrices = PrecisionRecallMatrices(sample.pool, side.pool, radii, 3)
    pr = precision_recall(reference=side.pool, sample=resampled, k=3)
    assert matrices.scores(index) == (pr.precision, pr.recall)


def test_bootstrap_is_seeded_and_brackets_the_spread(synthetic):
    sample, side = synthetic
    prepared = prepare_reference(side, ("fid", "pr"))
    scorer = SampleScorer(sample, prepared)
    first = bootstrap_intervals(scorer, 30, seed=3)
    assert first == bootstrap_intervals(scorer, 30, seed=3)
    assert first != bootstrap_intervals(scorer, 30, seed=4)
    assert set(first) == {
        f"{key}_{part}"
        for key in ("fid", "precision", "recall")
        for part in ("ci_low", "ci_high", "se")
    }
    assert first["fid_ci_low"] < first["fid_ci_high"] and first["fid_se"] > 0
    assert bootstrap_intervals(scorer, 0) == {}


def test_paired_change_of_a_set_with_itself_is_exactly_zero(synthetic):
    sample, side = synthetic
    scorer = SampleScorer(sample, prepare_reference(side, ("fid", "pr")))
    changes = paired_changes(scorer, scorer, 20)
    assert set(changes) == {"fid", "precision", "recall"}
    for change in changes.values():
        assert change == {"change": 0.0, "se": 0.0, "z": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_paired_change_moves_with_the_samples_that_changed(synthetic):
    # The second set is the first with its 8 last samples sent far outside the reference
    # manifold: precision falls by their share of inside samples, and only their presence
    # in a resample moves it, so the paired spread is far below the unpaired one.
    sample, side = synthetic
    prepared = prepare_reference(side, ("fid", "pr"))
    moved_pool = sample.pool.copy()
    moved_pool[-8:] += 100.0
    moved = FeatureSet(pool=moved_pool, spatial=sample.spatial, logits=sample.logits)
    first, second = SampleScorer(sample, prepared), SampleScorer(moved, prepared)
    before = precision_recall(reference=side.pool, sample=sample.pool, k=3)
    after = precision_recall(reference=side.pool, sample=moved_pool, k=3)
    assert after.precision < before.precision
    changes = paired_changes(first, second, 200, seed=1)
    precision = changes["precision"]
    assert precision["change"] == pytest.approx(after.precision - before.precision)
    assert precision["ci_low"] < precision["change"] < precision["ci_high"]
    unpaired = np.hypot(
        bootstrap_intervals(first, 200, seed=1)["precision_se"],
        bootstrap_intervals(second, 200, seed=1)["precision_se"],
    )
    assert 0 < precision["se"] < 0.8 * unpaired
    assert precision["z"] == pytest.approx(precision["change"] / precision["se"])
    assert paired_changes(first, second, 200, seed=1) == changes


def test_paired_change_needs_sets_of_one_size(synthetic):
    sample, side = synthetic
    prepared = prepare_reference(side, ("pr",))
    smaller = FeatureSet(pool=sample.pool[:20], spatial=sample.spatial[:20], logits=None)
    with pytest.raises(EvalsuiteError, match="same size"):
        paired_changes(SampleScorer(sample, prepared), SampleScorer(smaller, prepared), 10)


def test_grid_crosses_samplers_steps_and_scales_in_order(files):
    row = sweep_module.ModelRow(
        name="m", model=str(files["model"]), classifier=str(files["classifier"])
    )
    config = sweep_module.SweepConfig(
        rows=(row,),
        reference=str(files["reference"]),
        scales=(0.0, 1.5),
        samplers=("ddpm", "ddim"),
        steps=("5", "ddim5"),
    )
    cells = sweep_module.grid_cells(config)
    assert [(c.sampler, c.steps, c.guidance_scale) for c in cells] == [
        (sampler, steps, scale)
        for sampler in ("ddpm", "ddim")
        for steps in ("5", "ddim5")
        for scale in (0.0, 1.5)
    ]
    assert cells[-1].name == "m_ddim-ddim5_s1.5"
    assert len({c.name for c in cells}) == 8
    models = {"m": sweep_module.load_row(row)}
    sweep_module.check_grid(config, models)
    bad = sweep_module.SweepConfig(rows=(row,), reference="r", steps=("5", "ddim500"))
    with pytest.raises(EvalsuiteError, match="model m: .*ddim500"):
        sweep_module.check_grid(bad, models)
