"""Reliability: nothing lost, nothing stuck, no traceback, when a user or the machine misbehaves.

One test (or a few) per way things went wrong: an unrelated file next to an output, a kill at the
worst moment, damaged cache and part files, outputs over inputs, a full disk, file permissions,
internal errors, usage errors, and the notes about results that are almost always a mistake.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evalsuite.cli import main
from evalsuite.experiments import bootstrap, runstore
from evalsuite.experiments import sweep as sweep_module
from evalsuite.features import resolve_inception_weights
from evalsuite.models import build_configs, build_model
from evalsuite.models.checkpoint import load_checkpoint
from evalsuite.pipeline import evaluate as evaluate_module
from evalsuite.pipeline import sample as sample_module
from evalsuite.pipeline import sanity
from evalsuite.pipeline.featureset import FeatureComputer
from evalsuite.pipeline.sample import SamplingModels, SamplingSettings, generate
from evalsuite.runtime.cache import atomic_path, sha256_file
from tests.helpers import random_batch, tiny_unet

_load_inception_once = functools.cache(evaluate_module.load_inception)


@pytest.fixture(autouse=True)
def shared_inception(monkeypatch):
    # The real Inception network, loaded once per module instead of once per command.
    monkeypatch.setattr(evaluate_module, "load_inception", _load_inception_once)
    monkeypatch.setattr(sweep_module, "load_inception", _load_inception_once)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_unet(tmp_path_factory.mktemp("reliability") / "unet.pt")


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, prog_name="evalsuite")


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def sample_args(model_path: Path, out: Path, num: int = 4) -> list[str]:
    return [
        "sample",
        "--quiet",
        "--model",
        str(model_path),
        "--num-samples",
        str(num),
        "--sampler",
        "ddim",
        "--steps",
        "ddim3",
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]


def arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"]


def run_generate(model_path: Path, out: Path, num: int = 4) -> dict:
    models = SamplingModels(model=load_checkpoint(model_path, "unet"))
    settings = SamplingSettings(num_samples=num, sampler="ddim", steps="ddim3")
    return generate(models, settings, out, batch_size=2, progress=False)


# 1. An unrelated file where the sidecar goes is never overwritten.
def test_sample_refuses_to_overwrite_an_unrelated_json(model_path, tmp_path):
    mine = tmp_path / "m.json"
    mine.write_text('{"mine": 1}\n')
    result = invoke(sample_args(model_path, tmp_path / "m.npz"))
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and "m.json" in lines[0] and "not evalsuite's record" in lines[0]
    assert mine.read_text() == '{"mine": 1}\n'
    assert not (tmp_path / "m.npz").exists()
    # Its own record is recognised by content and may be rewritten.
    (tmp_path / "ok.json").write_text("{}")
    assert invoke(sample_args(model_path, tmp_path / "ok.npz")).exit_code == 2
    assert invoke(sample_args(model_path, tmp_path / "own.npz")).exit_code == 0
    record = json.loads((tmp_path / "own.json").read_text())
    (tmp_path / "own.npz").unlink()
    assert invoke(sample_args(model_path, tmp_path / "own.npz")).exit_code == 0
    assert json.loads((tmp_path / "own.json").read_text())["identity"] == record["identity"]


# 2. A kill between writing OUT.npz and its record does not block the rerun.
def test_kill_between_batch_and_record_is_recovered(model_path, tmp_path, monkeypatch):
    clean = tmp_path / "clean.npz"
    run_generate(model_path, clean)
    out = tmp_path / "killed.npz"
    # The state a kill leaves after OUT is written and before the record (and the parts'
    # removal): OUT.npz and a complete OUT.npz.parts/, no OUT.json.
    with monkeypatch.context() as patch:
        patch.setattr(sample_module.shutil, "rmtree", lambda *a, **k: None)
        run_generate(model_path, out)
    out.with_suffix(".json").unlink()
    assert (tmp_path / "killed.npz.parts").is_dir()
    result = invoke(sample_args(model_path, out))
    assert result.exit_code == 0, result.output
    for got, want in zip(arrays(out), arrays(clean), strict=True):
        np.testing.assert_array_equal(got, want)
    assert json.loads(out.with_suffix(".json").read_text())["num_samples"] == 4
    assert not (tmp_path / "killed.npz.parts").exists()


def test_kill_between_record_and_batch_is_recovered(model_path, tmp_path, monkeypatch):
    clean = tmp_path / "clean.npz"
    run_generate(model_path, clean)
    out = tmp_path / "killed.npz"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sample_module, "write_sample_batch", killed)
        with pytest.raises(KeyboardInterrupt):
            run_generate(model_path, out)
    assert out.with_suffix(".json").exists() and not out.exists()
    result = invoke(sample_args(model_path, out))
    assert result.exit_code == 0, result.output
    for got, want in zip(arrays(out), arrays(clean), strict=True):
        np.testing.assert_array_equal(got, want)


def test_sweep_recovers_a_cell_killed_before_its_record(model_path, tmp_path, monkeypatch):
    reference = random_batch(tmp_path / "reference.npz", 6, size=8)
    run_dir = tmp_path / "run"
    args = [
        "sweep",
        "--model",
        str(model_path),
        "--reference",
        str(reference),
        "--scales",
        "0",
        "--num-samples",
        "4",
        "--steps",
        "ddim3",
        "--sampler",
        "ddim",
        "--metrics",
        "fid",
        "--bootstrap",
        "0",
        "--no-judge",
        "--out",
        str(run_dir),
        "--quiet",
    ]
    # First run: killed right after the cell's OUT.npz was written; its record is then removed,
    # which is the state the previous write order (batch, then record) left behind.
    original_write = sample_module.write_sample_batch

    def killed_after_batch(out, images, labels):
        original_write(out, images, labels)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sample_module, "write_sample_batch", killed_after_batch)
        assert invoke(args).exit_code == 130
    for record in (run_dir / "samples").glob("*.json"):
        record.unlink()
    cells = list((run_dir / "samples").glob("*.npz"))
    assert len(cells) == 1 and not cells[0].with_suffix(".json").exists()
    result = invoke(args)
    assert result.exit_code == 0, result.output
    records = (run_dir / "records.jsonl").read_text().splitlines()
    assert len(records) == 1 and json.loads(records[0])["fid"] > 0


# 3. Damaged feature-cache chunks and sample parts are recomputed, with a note.
def test_truncated_feature_chunk_is_recomputed(tmp_path):
    samples = random_batch(tmp_path / "s.npz", 5, size=8, seed=11)
    reference = random_batch(tmp_path / "r.npz", 6, size=8, seed=12)
    args = ["evaluate", str(reference), str(samples), "--metrics", "fid", "--quiet"]
    args += ["--json", str(tmp_path / "first.json")]
    assert invoke(args).exit_code == 0
    weights = resolve_inception_weights(None)
    folder = FeatureComputer(None, weights.sha256, weights.has_logits).chunk_dir(
        sha256_file(samples)
    )
    (chunk,) = folder.glob("chunk_*.npz")
    chunk.write_bytes(chunk.read_bytes()[:3000])
    args[-1] = str(tmp_path / "second.json")
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert any("damaged feature cache entry" in line for line in error_lines(result))
    first = json.loads((tmp_path / "first.json").read_text())
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["fid"] == first["fid"]
    with np.load(chunk) as data:  # rewritten whole
        assert len(data["pool"]) == 5


def test_truncated_sample_part_is_generated_again(model_path, tmp_path, monkeypatch):
    clean = tmp_path / "clean.npz"
    run_generate(model_path, clean)
    out = tmp_path / "parts.npz"
    with monkeypatch.context() as patch:
        patch.setattr(sample_module.shutil, "rmtree", lambda *a, **k: None)
        run_generate(model_path, out)
    out.unlink()
    out.with_suffix(".json").unlink()
    part = sorted((tmp_path / "parts.npz.parts").glob("part_*.npz"))[1]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    result = invoke(sample_args(model_path, out))
    assert result.exit_code == 0, result.output
    assert any(part.name in line and "damaged" in line for line in error_lines(result))
    for got, want in zip(arrays(out), arrays(clean), strict=True):
        np.testing.assert_array_equal(got, want)


# 4. An empty precision/recall radii cache file is recomputed, with a note.
def test_empty_radii_cache_file_is_recomputed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path / "cache"))
    pool = np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32)
    first = bootstrap.reference_radii(pool, 3)
    (cached,) = (tmp_path / "cache" / "pr_radii").glob("*.npy")
    cached.write_bytes(b"")
    again = bootstrap.reference_radii(pool, 3)
    np.testing.assert_array_equal(again, first)
    assert "damaged precision/recall radii cache entry" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(cached), first)


# 5. An output path equal to an input is refused before any work.
@pytest.mark.parametrize(
    "case", ["evaluate-samples", "evaluate-reference", "ref-stats", "regress-json", "regress-md"]
)
def test_output_over_input_is_refused(case, tmp_path, monkeypatch):
    samples = random_batch(tmp_path / "v.npz", 4, size=8)
    reference = random_batch(tmp_path / "ref.npz", 4, size=8, seed=2)
    baseline = tmp_path / "t.toml"
    baseline.write_text('format = "evalsuite-regress-baseline"\n')
    monkeypatch.chdir(tmp_path)
    args = {
        "evaluate-samples": ["evaluate", "ref.npz", "v.npz", "--json", "v.npz"],
        "evaluate-reference": ["evaluate", "ref.npz", "v.npz", "--json", "./sub/../ref.npz"],
        "ref-stats": ["ref-stats", "ref.npz", "--out", str(reference)],
        "regress-json": ["regress", "t.toml", "--json", str(baseline)],
        "regress-md": ["regress", "t.toml", "--markdown", "t.toml"],
    }[case]
    (tmp_path / "sub").mkdir()
    before = {p: sha256_file(p) for p in (samples, reference, baseline)}
    result = invoke(args)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and "would destroy it" in lines[0], lines
    assert {p: sha256_file(p) for p in before} == before


# 6. A full disk: one line naming the file, exit 2, no partial file.
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    real_savez = np.savez

    def full_disk(file, *args, **kwargs):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    out = tmp_path / "x.npz"
    result = invoke(["data", "reference", "--num", "4", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and str(out) in lines[0] and "no space left" in lines[0], lines
    assert "MiB free" in lines[0]
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(np, "savez", real_savez)


def test_disk_full_outside_atomic_writes_is_one_line(monkeypatch):
    def full_quota():
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/results/run/records.jsonl")

    monkeypatch.setattr(evaluate_module, "versions", full_quota)
    result = invoke(["info"])
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and "records.jsonl" in lines[0] and "quota" in lines[0], lines


# 7. Outputs get the permissions of a plain open() under the umask.
def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "x.npz"
        assert invoke(["data", "reference", "--num", "4", "--out", str(out)]).exit_code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        with atomic_path(tmp_path / "atomic.txt") as tmp:
            tmp.write_text("x")
        assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == stat.S_IMODE(
            plain.stat().st_mode
        )
        # Files created exclusively (a run's config.json, records and claims) and checkpoints.
        run_dir = tmp_path / "run"
        runstore.open_config(run_dir, {"kind": "sweep"}, {"cells": ["c"]}, lambda a, b: [])
        runstore.write_record(run_dir, {"cell": "c", "fid": 1.0})
        held = runstore.claim(run_dir, "c")
        try:
            assert stat.S_IMODE(held.path.stat().st_mode) == 0o644
        finally:
            held.release()
        checkpoint = tiny_unet(tmp_path / "unet.pt")
        for path in [run_dir / "config.json", checkpoint, *(run_dir / "records").iterdir()]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        os.umask(0o077)
        with atomic_path(tmp_path / "private.txt") as tmp:
            tmp.write_text("x")
        assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
        # Rewriting keeps an existing file's mode, as open(path, "w") does.
        os.chmod(out, 0o640)
        assert invoke(["data", "reference", "--num", "4", "--out", str(out)]).exit_code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
    finally:
        os.umask(previous)


# An unexpected internal error: one line, the traceback in a file; --debug shows it.
def test_internal_error_is_one_line_with_the_traceback_in_a_file(monkeypatch):
    def broken():
        raise ZeroDivisionError("the bug")

    monkeypatch.setattr(evaluate_module, "versions", broken)
    result = invoke(["info"])
    assert result.exit_code == 70, result.output
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert "internal error while running `evalsuite info`" in lines[0]
    assert "ZeroDivisionError: the bug" in lines[0]
    assert "at evalsuite/cli/commands_eval.py:" in lines[0]
    saved = Path(lines[0].split("full traceback in ")[1].split(";")[0])
    assert "Traceback" in saved.read_text() and "the bug" in saved.read_text()
    debug = invoke(["--debug", "info"])
    assert isinstance(debug.exception, ZeroDivisionError)


def test_keyboard_interrupt_still_says_how_to_continue(monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "versions", interrupted)
    result = invoke(["info"])
    assert result.exit_code == 130 and "rerun the same command" in result.stderr


def test_usage_error_is_one_line():
    result = invoke(["sample", "--nosuch"])
    assert result.exit_code == 2
    assert error_lines(result) == [
        "Error: No such option '--nosuch'. Did you mean '--out'? (see 'evalsuite sample --help')"
    ]


# Smaller: --timestep_respacing in --model-flags, checkpoint messages, sizes, notes.
FLAGS = (
    "--image_size 8 --num_channels 32 --num_res_blocks 1 --attention_resolutions 4 "
    "--channel_mult 1,2 --num_head_channels 16 --diffusion_steps 100 --noise_schedule cosine"
)


def test_timestep_respacing_in_model_flags_is_honoured(tmp_path):
    config, _ = build_configs(FLAGS, kind="unet")
    bare = tmp_path / "bare.pt"
    torch.save(build_model(config).state_dict(), bare)
    flags = FLAGS + " --timestep_respacing ddim3"
    base = ["sample", "--quiet", "--model", str(bare), "--sampler", "ddim", "--num-samples", "2"]
    result = invoke([*base, "--model-flags", flags, "--out", str(tmp_path / "a.npz")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["identity"]["settings"]["steps"] == "ddim3"
    result = invoke(
        [*base, "--model-flags", flags, "--steps", "50", "--out", str(tmp_path / "b.npz")]
    )
    assert result.exit_code == 2
    assert "contradicts --timestep_respacing ddim3" in error_lines(result)[0]
    result = invoke([*base, "--out", str(tmp_path / "c.npz")])
    assert result.exit_code == 2
    assert "pass --model-flags" in result.stderr and "or --preset" in result.stderr
    assert "flags=" not in result.stderr


def test_corrupt_checkpoint_message_does_not_advise_weights_only_false(model_path, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(model_path.read_bytes()[:3000])
    result = invoke(["sample", "--model", str(broken), "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 2
    assert "is not a guided-diffusion state dict" in result.stderr
    assert "weights_only" not in result.stderr


def test_one_sample_fid_is_refused_before_feature_extraction(tmp_path, monkeypatch):
    samples = random_batch(tmp_path / "one.npz", 1, size=8)
    reference = random_batch(tmp_path / "r.npz", 1, size=8, seed=3)

    def no_features(*args, **kwargs):
        raise AssertionError("features extracted before the size check")

    monkeypatch.setattr(FeatureComputer, "compute", no_features)
    result = invoke(["evaluate", str(reference), str(samples), "--metrics", "fid", "--quiet"])
    assert result.exit_code == 2
    assert "SAMPLES has 1" in error_lines(result)[0]
    samples = random_batch(tmp_path / "two.npz", 2, size=8)
    args = ["evaluate", str(reference), str(samples), "--metrics", "fid,pr", "--quiet"]
    result = invoke([*args, "--ref-stats", "recompute"])
    assert result.exit_code == 2
    assert "k+1 = 4 images on the reference side, got 1" in error_lines(result)[0]
    result = invoke([*args[:-2], "fid", "--quiet", "--ref-stats", "recompute"])
    assert result.exit_code == 2 and "REFERENCE has 1" in error_lines(result)[0]


def test_notes_for_few_samples_resolution_mismatch_and_noise(tmp_path):
    reference = tmp_path / "r.npz"
    assert invoke(["data", "reference", "--num", "8", "--out", str(reference)]).exit_code == 0
    samples = random_batch(tmp_path / "s.npz", 5, size=32, seed=5)
    out = tmp_path / "result.json"
    args = ["evaluate", str(reference), str(samples), "--metrics", "fid,pr", "--quiet"]
    result = invoke([*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    notes = json.loads(out.read_text())["notes"]
    assert any("FID of only 5 samples" in note for note in notes)
    assert any("samples are 32x32 but the reference is 16x16" in note for note in notes)
    # Uniform noise against shapes: no sample near the reference; the note names the flags.
    assert json.loads(out.read_text())["precision"] == 0.0
    assert any("--noise_schedule" in n and "--learn_sigma" in n for n in notes)
    for note in notes:
        assert f"note: {note}" in result.stderr
        assert note not in result.stdout


def test_noise_like_judged_by_fid_against_noise():
    assert sanity.noise_like_note(precision=None, fid=300.0, fid_of_noise=310.0) is not None
    assert sanity.noise_like_note(precision=None, fid=140.0, fid_of_noise=310.0) is None
    assert sanity.noise_like_note(precision=0.5, fid=300.0, fid_of_noise=310.0) is None
    assert sanity.noise_like_note(precision=0.0, fid=None, fid_of_noise=None) is not None
    assert sanity.noise_like_note(precision=None, fid=300.0, fid_of_noise=None) is None
    assert sanity.few_samples_note(["fid"], 99) is not None
    assert sanity.few_samples_note(["fid"], 100) is None
    assert sanity.few_samples_note(["pr", "kid"], 5) is None
