"""`evalsuite regress` under torchrun (gloo on CPU): the single-process results, one report, the
same exit code on every rank, and a rank that dies ends the run in bounded time.

A temporary baseline from the zoo with a tiny protocol (6 guided DDIM-4 samples) is made by one
process with one thread, as the ranks use one thread each (Inception's last bits depend on the
thread count). Some tests launch the ranks themselves with torchrun's environment variables
(RANK, WORLD_SIZE, MASTER_ADDR/PORT), which is what torchrun does, so that each rank's exit code
and output can be read.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalsuite.cli import main

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = [
    "--model",
    "zoo:cond_unet.pt",
    "--classifier",
    "zoo:classifier.pt",
    "--guidance-scale",
    "1.0",
    "--sampler",
    "ddim",
    "--steps",
    "ddim4",
    "--num-samples",
    "6",
    "--seed",
    "3",
]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "EVALSUITE_DIST_BACKEND": "gloo",
    }


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    launcher += ["--master_port", str(_free_port())]
    return subprocess.run(
        [*launcher, "-m", "evalsuite", *args],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


def spawn_ranks(nproc: int, args: list[str]) -> list[subprocess.Popen]:
    """The ranks of a torchrun job, started directly (each with its own exit code and output)."""
    port = str(_free_port())
    procs = []
    for rank in range(nproc):
        env = {
            **_env(),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(nproc),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "evalsuite", *args],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    return [(p.wait(timeout), *p.communicate()) for p in procs]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def zoo_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline of the tiny zoo protocol, made by a single process with one thread."""
    path = tmp_path_factory.mktemp("regress_torchrun") / "tiny.toml"
    args = ["regress", "--init", str(path), "--quiet", *PROTOCOL]
    args += ["--metrics", "fid,kid,pr", "--tolerance", "fid=abs:0,kid=ci:0.9"]
    args += ["--kid-subsets", "5", "--bootstrap-resamples", "20"]
    proc = subprocess.run(
        [sys.executable, "-m", "evalsuite", *args],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def test_two_ranks_check_equals_one_process(zoo_baseline, tmp_path):
    json_path = tmp_path / "r.json"
    proc = torchrun(2, ["regress", str(zoo_baseline), "--quiet", "--json", str(json_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One report, from rank 0: the table's header and the verdict appear once.
    assert [line.split()[0] for line in proc.stdout.splitlines()].count("metric") == 1
    assert proc.stdout.count("PASS: no metric is worse") == 1
    assert "samples: bitwise identical to the baseline's run" in proc.stdout
    result = json.loads(json_path.read_text())
    recorded = tomllib.loads(zoo_baseline.read_text())
    for name, entry in result["metrics"].items():
        # fid has an abs 0 tolerance: any other bit than the single process's would fail.
        assert entry["got"] == recorded["metrics"][name]["expected"], name
    assert result["samples_sha256"] == recorded["provenance"]["samples_sha256"]


def test_three_ranks_update_writes_the_single_process_baseline(zoo_baseline, tmp_path):
    copy = tmp_path / "copy.toml"
    copy.write_text(zoo_baseline.read_text())
    proc = torchrun(3, ["regress", "--update", str(copy), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"wrote {copy}") == 1
    updated, original = tomllib.loads(copy.read_text()), tomllib.loads(zoo_baseline.read_text())
    # The same values, ci bound (bootstrap on rank 0) and hashes, bit for bit.
    assert updated["metrics"] == original["metrics"]
    for table in ("model", "classifier", "sampling", "reference", "evaluation"):
        assert updated[table] == original[table], table


def _edited(baseline: Path, target: Path, pattern: str, replacement: str) -> Path:
    text, count = re.subn(pattern, replacement, baseline.read_text(), count=1, flags=re.M)
    assert count == 1
    target.write_text(text)
    return target


def test_every_rank_exits_1_on_a_regression_and_2_on_bad_input(zoo_baseline, tmp_path):
    # The fid expected 1 lower with an abs 0 tolerance: a regression that every rank reports.
    recorded = tomllib.loads(zoo_baseline.read_text())["metrics"]["fid"]["expected"]
    worse = _edited(
        zoo_baseline,
        tmp_path / "worse.toml",
        r"^(\[metrics\.fid\]\nexpected = ).*$",
        rf"\g<1>{recorded - 1.0!r}",
    )
    outcomes = finish(spawn_ranks(2, ["regress", str(worse), "--quiet"]))
    assert [code for code, _, _ in outcomes] == [1, 1], outcomes
    assert "REGRESSION in fid" in outcomes[0][1] and outcomes[1][1] == ""

    # A sample batch of another seed, seen by rank 0 (which checks the sidecar): exit 2 on
    # every rank, one line in all.
    batch = tmp_path / "seed4.npz"
    args = ["--guidance-scale", "1.0", "--sampler", "ddim", "--steps", "ddim4"]
    args += ["--num-samples", "6", "--seed", "4", "--out", str(batch)]
    made = CliRunner().invoke(main, ["sample", "--quiet", *args])
    assert made.exit_code == 0, made.output
    outcomes = finish(spawn_ranks(2, ["regress", str(zoo_baseline), "--samples", str(batch)]))
    assert [code for code, _, _ in outcomes] == [2, 2], outcomes
    errors = [line for _, out, err in outcomes for line in error_lines(out + err)]
    assert len(errors) == 1 and "sampling.seed is 4 in seed4.json but 3" in errors[0], outcomes


def test_a_killed_rank_ends_the_others_with_one_message(zoo_baseline, tmp_path):
    longer = _edited(
        zoo_baseline, tmp_path / "longer.toml", r"^num_samples = 6$", "num_samples = 40"
    )
    keep = tmp_path / "kept.npz"
    procs = spawn_ranks(
        2,
        ["regress", "--update", str(longer), "--quiet", "--batch-size", "1"]
        + ["--keep-samples", str(keep)],
    )
    parts = keep.with_name(keep.name + ".parts")
    deadline = time.monotonic() + 180
    while not list(parts.glob("part_*.npz")):
        assert time.monotonic() < deadline and procs[0].poll() is None, finish(procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code, out, err = finish(procs[:1], timeout=60)[0]
    assert time.monotonic() - killed < 60
    assert code == 2, (out, err)
    assert error_lines(err) == [
        "Error: another rank stopped during sampling (its error, if it could report one, is "
        "above); no result"
    ], err
    procs[1].wait(10)
    assert tomllib.loads(longer.read_text())["sampling"]["num_samples"] == 40  # not rewritten
