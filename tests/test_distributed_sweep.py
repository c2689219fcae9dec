"""`sweep` and `ablate` under torchrun and as concurrent cluster shards (--shard K/N).

End to end on the zoo with gloo on CPU: every multi-process run directory is compared with one
written by a single process (records without their timings, sample and thumbnail files byte
for byte), including after a rank was killed in the middle of a cell, and when two shards plus
a duplicate of one of them write one directory at once. The run-store pieces (exclusive
records, claims and their takeover, legacy records.jsonl with a torn line, the report of an
unfinished grid) are tested directly.

Single processes run with the machine's default thread count while torchrun gives each rank
one thread: the records must not depend on it (scoring pins torch and BLAS to one thread).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalsuite import zoo
from evalsuite.cli import main
from evalsuite.experiments import runstore

REPO = Path(__file__).resolve().parents[1]
SWEEP = [
    "sweep",
    "--scales",
    "0,2",
    "--cfg-scales",
    "none",
    "--num-samples",
    "6",
    "--steps",
    "ddim2",
    "--bootstrap",
    "4",
    "--quiet",
    "--keep-samples",
]
CELLS = [
    "unconditional_ddim-ddim2_s0",
    "unconditional_ddim-ddim2_s2",
    "conditional_ddim-ddim2_s0",
    "conditional_ddim-ddim2_s2",
]
# Record fields that legitimately differ between runs: timings, and whether a cell resumed.
UNSTABLE = ("sampling_seconds", "features_seconds", "metrics_seconds", "bootstrap_seconds")
UNSTABLE += ("finished", "resumed")
TIMEOUT = 240


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return {**base, "PYTHONPATH": str(REPO), **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def evalsuite(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evalsuite", *args],
        env=env(**extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def torchrun_command(nproc: int, *args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    return [*launcher, "--master_port", str(free_port()), "-m", "evalsuite", *args]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(nproc, *args),
        env=env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_same_run(run: Path, single: Path) -> None:
    """`run` holds what the single-process `single` holds: records, samples, thumbnails."""
    got, want = records(run), records(single)
    assert [r["cell"] for r in got] == [r["cell"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert {k: v for k, v in a.items() if k not in UNSTABLE} == {
            k: v for k, v in b.items() if k not in UNSTABLE
        }, a["cell"]
    assert sorted(p.name for p in (run / "records").iterdir()) == sorted(
        p.name for p in (single / "records").iterdir()
    )
    for folder in ("samples", "thumbs"):
        names = sorted(p.name for p in (single / folder).glob("*.npz"))
        assert names and names == sorted(p.name for p in (run / folder).glob("*.npz"))
        for name in names:
            assert (run / folder / name).read_bytes() == (single / folder / name).read_bytes()
    a, b = runstore.read_config(run), runstore.read_config(single)
    assert a["identity"] == b["identity"] and a["cells"] == b["cells"]
    assert not list((run / "claims").iterdir())


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    done = evalsuite(*SWEEP, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_torchrun_sweep_equals_one_process_with_one_record_per_cell(single, tmp_path):
    # The case: both ranks used to run the whole grid (7 records for 4 cells).
    out = tmp_path / "run"
    done = torchrun(2, *SWEEP, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["cell"] for r in records(out)] == CELLS
    assert_same_run(out, single)
    # Rank 0 alone prints: each cell's start and result line once, the table once.
    assert done.stdout.count("[1/4] unconditional, ddim ddim2, scale 0") == 2
    assert done.stdout.count("report: ") == 1
    assert done.stdout.count("| conditional | 2 |") == 1
    assert (out / "report" / "table4.md").read_text().count("| unconditional | 2 |") == 1


def test_ablation_under_torchrun_equals_one_process(tmp_path):
    spec = tmp_path / "ablation.toml"
    checkpoints = {
        point: str(zoo.asset(f"ablation_baseline_step{step}.pt"))
        for point, step in (("0.6K", 600), ("1.2K", 1200))
    }
    spec.write_text(
        '[sampling]\nnum_samples = 4\nsteps = "ddim2"\n'
        '[evaluation]\nreference = "zoo"\nmetrics = ["fid", "sfid"]\nbootstrap = 4\n'
        '[[variant]]\nname = "baseline"\ncheckpoints = '
        + "{ "
        + ", ".join(f'"{point}" = "{path}"' for point, path in checkpoints.items())
        + " }\n"
    )
    args = ["ablate", str(spec), "--quiet", "--keep-samples"]
    one = evalsuite(*args, "--out", str(tmp_path / "single"))
    assert one.returncode == 0, one.stderr[-3000:]
    multi = torchrun(2, *args, "--out", str(tmp_path / "multi"))
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert [r["cell"] for r in records(tmp_path / "multi")] == [
        "baseline@0.6K_ddim-ddim2_s0",
        "baseline@1.2K_ddim-ddim2_s0",
    ]
    assert_same_run(tmp_path / "multi", tmp_path / "single")
    assert multi.stdout.count("report: ") == 1
    assert (tmp_path / "multi" / "report" / "table1.md").exists()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rank_of(pid: int) -> str | None:
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in variables:
        if item.startswith(b"RANK="):
            return item[5:].decode()
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_rank_killed_mid_cell_then_rerun_gives_the_same_run(single, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        torchrun_command(2, *SWEEP, "--batch-size", "1", "--out", str(out)),
        env=env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.poll() is None:
        if (out / "records").is_dir() and any((out / "records").glob("*.json")):
            break
        time.sleep(0.01)
    victims = [p for p in _children(proc.pid) if _rank_of(p) == "1"]
    assert victims, "rank 1 was not found (the run finished too early?)"
    os.kill(victims[0], signal.SIGKILL)
    killed = time.time()
    proc.communicate(timeout=120)
    # The job ends, promptly, and unfinished.
    assert proc.returncode != 0 and time.time() - killed < 60
    finished = len(list((out / "records").glob("*.json")))
    assert 1 <= finished < len(CELLS)

    again = torchrun(3, *SWEEP, "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{finished} of 4 cells already finished" in again.stdout
    assert_same_run(out, single)


def test_concurrent_shards_and_a_duplicate_write_each_cell_once(single, tmp_path):
    out = tmp_path / "run"
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "evalsuite", *SWEEP, "--shard", shard, "--out", str(out)],
            env=env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in ("0/2", "1/2", "0/2")
    ]
    outputs = [job.communicate(timeout=TIMEOUT) for job in jobs]
    for job, (_, stderr) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, stderr[-3000:]
    # Each job ran cells of its own shard only (0/2: grid positions 1 and 3; 1/2: 2 and 4).
    started = [
        {line.split("]")[0] + "]" for line in out.splitlines() if line.startswith("[")}
        for out, _ in outputs
    ]
    assert started[1] == {"[2/4]", "[4/4]"} and started[0] | started[2] <= {"[1/4]", "[3/4]"}
    assert started[0] | started[2] == {"[1/4]", "[3/4]"}
    assert any("report: " in out for out, _ in outputs)
    assert [r["cell"] for r in records(out)] == CELLS
    assert_same_run(out, single)
    # The last shard to finish wrote the report; the full table is there.
    assert (out / "report" / "table4.md").read_text().count("| conditional |") == 2
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output


def test_shard_runs_only_its_cells_and_report_lists_the_missing(single, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(single, out)
    shutil.rmtree(out / "report")
    for name in (CELLS[1], CELLS[3]):
        (out / "records" / f"{name}.json").unlink()
    runstore.export_records(out)
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.startswith("  missing ")]
    assert [line.split()[1] for line in lines] == [CELLS[1], CELLS[3]]
    assert "not started or stopped" in lines[0]
    assert not (out / "report").exists()
    result = CliRunner().invoke(main, ["report", str(out), "--partial"])
    assert result.exit_code == 0, result.output
    assert (out / "report" / "table4.md").exists()


def test_bad_input_is_one_message_from_all_ranks(tmp_path):
    done = torchrun(2, "sweep", "--scales", "0,x", "--out", str(tmp_path / "run"))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "'x' is not a number" in errors[0]


def _launch_ranks(args_of_rank: list[list[str]], **extra: str) -> list[subprocess.Popen]:
    """The ranks of a job without torchrun's agent (nothing kills the others when one stops)."""
    port = str(free_port())
    size = str(len(args_of_rank))
    return [
        subprocess.Popen(
            [sys.executable, "-m", "evalsuite", *args],
            env=env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=size,
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                **extra,
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, args in enumerate(args_of_rank)
    ]


def test_input_only_one_rank_cannot_read_stops_every_rank_with_one_message(tmp_path):
    # Rank 1 (another node, say) lacks the classifier file; nothing may hang.
    good = [*SWEEP, "--out", str(tmp_path / "run")]
    bad = [*good, "--classifier", str(tmp_path / "missing.pt")]
    ranks = _launch_ranks([good, bad], EVALSUITE_DIST_TIMEOUT="60")
    outputs = [rank.communicate(timeout=TIMEOUT) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2]
    assert [line for line in outputs[0][1].splitlines() if not line.startswith("note:")] == [
        f"Error: rank 1: unconditional: classifier checkpoint {tmp_path / 'missing.pt'} "
        "does not exist"
    ]
    assert outputs[1][1].strip() == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_dead_rank_ends_the_others_within_the_timeout(tmp_path):
    out = tmp_path / "run"
    args = [*SWEEP, "--batch-size", "1", "--out", str(out)]
    ranks = _launch_ranks([args, args], EVALSUITE_DIST_TIMEOUT="30")
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and ranks[0].poll() is None:
        if (out / "records").is_dir() and any((out / "records").glob("*.json")):
            break
        time.sleep(0.01)
    ranks[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, stderr = ranks[0].communicate(timeout=120)
    ranks[1].communicate()
    assert time.time() - killed < 45
    assert ranks[0].returncode == 2
    lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "another rank of this torchrun job stopped" in lines[0], stderr


# --- the run store, directly ---------------------------------------------------------------


def test_a_cell_is_recorded_once(tmp_path):
    record = {"cell": "a_ddim-ddim2_s0", "fid": 1.0}
    assert runstore.write_record(tmp_path, record) is True
    assert runstore.write_record(tmp_path, {**record, "fid": 2.0}) is False
    assert runstore.read_records(tmp_path) == [record]
    assert records(tmp_path) == [record]


def test_claims_are_exclusive_and_stale_ones_are_taken_over_once(tmp_path):
    first = runstore.claim(tmp_path, "cell")
    assert first is not None and runstore.claim(tmp_path, "cell") is None
    first.release()
    assert runstore.claim_holder(tmp_path, "cell") is None
    # A claim left by a process that is gone (same host): stale, taken over by one claimant.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    path = tmp_path / "claims" / "cell.json"
    path.write_text(
        json.dumps(
            {"token": "old", "pid": int(dead), "host": socket.gethostname(), "started": "then"}
        )
    )
    assert runstore.claim_holder(tmp_path, "cell").stale()
    winner = runstore.claim(tmp_path, "cell")
    assert winner is not None
    assert runstore.claim(tmp_path, "cell") is None
    assert runstore.claim_holder(tmp_path, "cell").pid == os.getpid()
    winner.release()
    assert not list((tmp_path / "claims").iterdir())


def test_another_hosts_claim_is_stale_after_its_heartbeat_stops(tmp_path, monkeypatch):
    monkeypatch.setenv(runstore.STALE_ENV, "5")
    path = tmp_path / "claims" / "cell.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"token": "t", "pid": 1, "host": "elsewhere", "started": "x"}))
    assert runstore.claim(tmp_path, "cell") is None
    os.utime(path, (time.time() - 10, time.time() - 10))
    assert runstore.claim(tmp_path, "cell") is not None


def test_torn_last_line_of_a_legacy_records_file_is_dropped_with_a_note(tmp_path, capsys):
    cells = ["m_ddim-ddim25_s0", "m_ddim-ddim25_s1"]
    identity = {"kind": "sweep", "grid": {}, "models": []}
    runstore.open_config(tmp_path, identity, {"cells": cells}, lambda a, b: [])
    whole = json.dumps({"cell": cells[0], "fid": 3.0})
    (tmp_path / "records.jsonl").write_text(whole + "\n" + '{"cell": "m_ddim-ddim25_s1", "fi')
    assert runstore.read_records(tmp_path) == [{"cell": cells[0], "fid": 3.0}]
    assert "records.jsonl:2 is an unfinished record (torn write)" in capsys.readouterr().err
    # Continuing the run imports the good record and rewrites the file whole.
    runstore.import_legacy(tmp_path)
    assert (tmp_path / "records.jsonl").read_text() == whole + "\n"
    assert [m.cell for m in runstore.missing_cells(tmp_path)] == [cells[1]]


def test_different_config_is_refused_and_config_is_created_once(tmp_path):
    identity = {"kind": "sweep", "grid": {"scales": [0.0]}}
    created = runstore.open_config(tmp_path, identity, {"cells": []}, lambda a, b: [])
    again = runstore.open_config(tmp_path, identity, {"cells": []}, lambda a, b: [])
    assert again["created"] == created["created"]
    with pytest.raises(Exception, match="different configuration"):
        runstore.open_config(
            tmp_path, {**identity, "grid": {"scales": [1.0]}}, {}, lambda a, b: ["grid.scales"]
        )


@pytest.mark.parametrize(
    ("text", "message"), [("2/2", "0 <= K < N"), ("a/b", "is not K/N"), ("1", "is not K/N")]
)
def test_bad_shard_is_one_line_exit_2(text, message, tmp_path):
    result = CliRunner().invoke(main, ["sweep", "--shard", text, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def doc_commands() -> list[list[str]]:
    """The evalsuite commands of docs/scaling.md (continuation lines joined, launcher removed)."""
    import shlex

    text = (REPO / "docs" / "scaling.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or "evalsuite " not in line:
            continue
        if not (line.startswith("evalsuite ") or line.startswith("torchrun ")):
            continue
        words = shlex.split(line.replace("$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT", "0/4"))
        start = words.index("evalsuite")
        commands.append(words[start + 1 :])
    return commands


def test_the_scaling_guide_commands_parse_with_the_cli():
    commands = doc_commands()
    assert [c[0] for c in commands] == ["sweep", "ablate", "sweep", "sweep", "report"]
    for words in commands:
        context = main.make_context("evalsuite", list(words))
        command = main.get_command(context, words[0])
        command.make_context(words[0], list(words[1:]), parent=context)
