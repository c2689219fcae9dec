"""The embedded model zoo: tiny, genuinely trained checkpoints of the procedural shapes dataset.

Commands given no model, classifier or reference use these (and say so). Files live in
`evalsuite/zoo/assets/` (checkpoints) and `reference_stats/` (reference statistics), each listed
with its sha256 in a `manifest.json`. A missing or corrupt file raises an `EvalsuiteError` naming
the file and the command that rebuilds the zoo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalsuite.runtime.cache import atomic_path, sha256_file
from evalsuite.runtime.errors import EvalsuiteError

ZOO_DIR = Path(__file__).resolve().parent / "assets"
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "reference_stats"
REBUILD_COMMAND = "bash zoo/build_zoo.sh"

# Names of the zoo's roles -> file names inside ZOO_DIR (checkpoints) or REFERENCE_DIR (stats).
MODEL = "cond_unet.pt"
UNCOND_MODEL = "uncond_unet.pt"
CFG_MODEL = "cfg_unet.pt"
CLASSIFIER = "classifier.pt"
JUDGE = "judge.pt"
REFERENCE = "shapes16_reference.npz"
ABLATION_SPEC = "ablation.toml"


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EvalsuiteError(
            f"{path}: corrupt zoo manifest ({error}); rebuild with `{REBUILD_COMMAND}`"
        ) from None


def _checked(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.exists():
        raise EvalsuiteError(
            f"zoo file {path} is missing; rebuild the zoo with `{REBUILD_COMMAND}`"
        )
    entry = _manifest(folder).get("files", {}).get(name)
    if entry is not None and entry.get("sha256") != sha256_file(path):
        raise EvalsuiteError(
            f"zoo file {path} does not match its sha256 in {folder / 'manifest.json'} "
            f"(corrupt or modified); restore it with git or rebuild with `{REBUILD_COMMAND}`"
        )
    return path


def asset(name: str) -> Path:
    """A zoo checkpoint (or the ablation spec) by file name, verified against the manifest."""
    return _checked(ZOO_DIR, name)


def reference() -> Path:
    """The zoo's reference statistics (ref-stats file of the shapes reference split)."""
    return _checked(REFERENCE_DIR, REFERENCE)


def write_manifest(folder: Path, info: dict[str, dict[str, Any]] | None = None) -> Path:
    """(Re)write `folder/manifest.json` with the sha256 and size of every asset file in it."""
    info = info or {}
    old = _manifest(folder).get("files", {})
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name == "manifest.json" or path.name.startswith(".") or path.is_dir():
            continue
        files[path.name] = {
            **old.get(path.name, {}),
            **info.get(path.name, {}),
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
        }
    target = folder / "manifest.json"
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps({"rebuild": REBUILD_COMMAND, "files": files}, indent=2) + "\n")
    return target
