"""The public Python API in `evalsuite/__init__.py`: cheap to import, and each entry point works.

The README's example (load, sample, evaluate) runs in tests/test_docs.py; here: the lazy import,
`sweep` with its config types, and paths accepted in place of loaded models.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import evalsuite
from evalsuite import zoo


def test_import_is_cheap_and_keeps_the_versions():
    code = "import sys, evalsuite; print('torch' in sys.modules, evalsuite.PROTOCOL_VERSION)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "adm-1"]
    assert evalsuite.__version__
    assert set(evalsuite.__all__) >= {"evaluate", "sample", "sweep", "load_checkpoint"}


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        evalsuite.no_such_thing  # noqa: B018


def test_sample_takes_checkpoint_paths(tmp_path):
    out = tmp_path / "s.npz"
    record = evalsuite.sample(
        zoo.asset("cond_unet.pt"),
        out,
        num_samples=3,
        sampler="ddim",
        steps="ddim2",
        seed=5,
        progress=False,
    )
    with np.load(out) as batch:
        assert batch["arr_0"].shape == (3, 16, 16, 3) and batch["arr_0"].dtype == np.uint8
        assert batch["arr_1"].shape == (3,)
    assert record["num_samples"] == 3


def test_sweep_runs_a_config_into_a_run_dir(tmp_path):
    row = evalsuite.ModelRow(name="cond", model=str(zoo.asset("cond_unet.pt")))
    config = evalsuite.SweepConfig(
        rows=(row,),
        reference=str(zoo.reference()),
        scales=(0.0,),
        steps=("ddim2",),
        num_samples=4,
        metrics=("kid",),
        bootstrap=0,
    )
    records = evalsuite.sweep(config, tmp_path / "run", progress=False)
    assert [r["model"] for r in records] == ["cond"]
    assert np.isfinite(records[0]["kid"])
    written = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").open()]
    assert written[0]["kid"] == records[0]["kid"]
