"""`sample`: generate an ADM sample batch from a checkpoint, reproducibly and resumably (§3–5).

Reproducibility: sample i's noise stream and class depend only on (seed, i), never on the batch
size or the number of processes. Resumability: every finished batch is written atomically into
`OUT.parts/` as `part_<lo>_<hi>.npz`; a rerun with the same settings generates only the missing
indices, then assembles OUT (`arr_0` uint8 NHWC, `arr_1` int64 labels) and a sidecar JSON with the
resolved configuration. A rerun with different settings is refused rather than mixing samples.
Under `torchrun` the missing batches are shared round-robin between ranks; rank 0 assembles.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from evalsuite import __version__
from evalsuite.diffusion import (
    ClassifierGuidance,
    DiffusionSchedule,
    PerSampleNoise,
    classifier_free,
    make_denoiser,
    make_schedule,
    sample_ddim,
    sample_ddpm,
    space_timesteps,
)
from evalsuite.models.checkpoint import LoadedModel
from evalsuite.models.config import config_to_dict
from evalsuite.models.diffusers_source import DiffusersModel
from evalsuite.pipeline.batches import write_sample_batch
from evalsuite.runtime import dist
from evalsuite.runtime.cache import atomic_path
from evalsuite.runtime.errors import EvalsuiteError, note
from evalsuite.runtime.threads import CoreWorkers, single_thread

# "scheduler": a diffusers folder's own scheduler (`diffusers:` models only).
SAMPLERS = ("ddpm", "ddim", "scheduler")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What --guidance-scale scales: the classifier gradient (ADM) or classifier-free guidance.
GUIDANCE_KINDS = ("classifier", "cfg")
# How each kind's scale reads (shown in sidecars, tables and figure axes).
SCALE_CONVENTIONS = {
    "classifier": "classifier-guidance scale s (ADM; 0 = unguided)",
    "cfg": "CFG scale s (diffusers' guidance_scale; 1 = conditional, 0 = unconditional, w = s - 1)",
}


@dataclass(frozen=True)
class SamplingSettings:
    """Every setting that changes the samples (the identity of a sample batch)."""

    num_samples: int
    sampler: str = "ddpm"
    steps: str = "250"
    eta: float = 0.0
    guidance_scale: float = 0.0
    classes: str = "uniform"
    seed: int = 0
    precision: str = "fp32"
    clip_denoised: bool = True
    guidance: str = "classifier"
    classifier_scale: float = 0.0

    @property
    def classifier_gradient_scale(self) -> float:
        """Scale of the classifier gradient: guidance_scale, or classifier_scale on top of CFG."""
        return self.guidance_scale if self.guidance == "classifier" else self.classifier_scale

    def validate(self) -> None:
        if self.num_samples <= 0:
            raise EvalsuiteError(f"--num-samples must be positive, got {self.num_samples}")
        if self.sampler not in SAMPLERS:
            raise EvalsuiteError(
                f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"
            )
        if self.precision not in PRECISIONS:
            raise EvalsuiteError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise EvalsuiteError(
                f"--guidance-scale must be a finite number >= 0, got {self.guidance_scale}"
            )
        if self.eta < 0:
            raise EvalsuiteError(f"--eta must be >= 0, got {self.eta}")
        if self.guidance not in GUIDANCE_KINDS:
            raise EvalsuiteError(
                f"--guidance must be one of {', '.join(GUIDANCE_KINDS)}, got {self.guidance!r}"
            )
        if not math.isfinite(self.classifier_scale) or self.classifier_scale < 0:
            raise EvalsuiteError(
                f"--classifier-scale must be a finite number >= 0, got {self.classifier_scale}"
            )
        if self.classifier_scale > 0 and self.guidance != "cfg":
            raise EvalsuiteError(
                "--classifier-scale adds a classifier gradient to --guidance cfg; with "
                "--guidance classifier the classifier's scale is --guidance-scale"
            )


@dataclass
class SamplingModels:
    """The diffusion model and the optional guiding classifier."""

    model: LoadedModel | DiffusersModel
    classifier: LoadedModel | None = None

    @property
    def num_classes(self) -> int | None:
        if self.classifier is not None:
            return self.classifier.model_config.num_classes
        config = self.model.model_config
        return config.num_classes if config.class_cond else None

    def check(self, settings: SamplingSettings) -> None:
        """Reject incompatible model/classifier/settings combinations before any work."""
        if isinstance(self.model, DiffusersModel):
            from evalsuite.pipeline.diffusers_sample import check_settings

            check_settings(self, settings)
            return
        if settings.sampler == "scheduler":
            raise EvalsuiteError(
                "--sampler scheduler (a diffusers folder's own scheduler) needs a "
                "--model diffusers:PATH; use ddpm or ddim"
            )
        model_config = self.model.model_config
        if getattr(model_config, "small_size", None):
            raise EvalsuiteError(
                f"{self.model.path}: super-resolution (upsampler) models need low-resolution inputs; "
                "`evalsuite sample` generates from base models only"
            )
        if settings.guidance == "cfg" and not getattr(model_config, "null_class", False):
            raise EvalsuiteError(
                f"--guidance cfg needs a model with a null class (trained with label dropout), "
                f"but {self.model.path.name} has none; use --guidance classifier with a "
                "classifier, or a checkpoint with null_class (--model-flags ... --null_class True)"
            )
        if settings.classifier_scale > 0 and self.classifier is None:
            raise EvalsuiteError(
                f"--classifier-scale {settings.classifier_scale} needs a classifier "
                "(--classifier PATH)"
            )
        if (
            settings.guidance == "classifier"
            and settings.guidance_scale > 0
            and (self.classifier is None)
        ):
            raise EvalsuiteError(
                f"--guidance-scale {settings.guidance_scale} needs a classifier (--classifier PATH); "
                "use --guidance-scale 0 for unguided sampling"
            )
        if self.classifier is not None:
            cls_config = self.classifier.model_config
            if cls_config.image_size != model_config.image_size:
                raise EvalsuiteError(
                    f"classifier image size {cls_config.image_size} does not match the model's "
                    f"{model_config.image_size}; use the classifier trained for {model_config.image_size}x"
                    f"{model_config.image_size}"
                )
            if model_config.class_cond and cls_config.num_classes != model_config.num_classes:
                raise EvalsuiteError(
                    f"classifier has {cls_config.num_classes} classes but the model has "
                    f"{model_config.num_classes}; they must agree"
                )
        resolve_class_spec(settings.classes, self.num_classes)
        space_timesteps(self.model.diffusion_config.diffusion_steps, settings.steps)


def check_guidance_choice(guidance: str | None, has_classifier: bool) -> str:
    """The guidance kind to use: an explicit choice (checked) or the default, "classifier".

    `--guidance classifier` given explicitly without a classifier is an error even at scale 0;
    left out, "classifier" at scale 0 is plain (unguided) sampling as before.
    """
    if guidance is None:
        return "classifier"
    if guidance not in GUIDANCE_KINDS:
        raise EvalsuiteError(
            f"--guidance must be one of {', '.join(GUIDANCE_KINDS)}, got {guidance!r}"
        )
    if guidance == "classifier" and not has_classifier:
        raise EvalsuiteError(
            "--guidance classifier needs a classifier (--classifier PATH); for a model with a "
            "null class use --guidance cfg"
        )
    return guidance


def resolve_class_spec(spec: str, num_classes: int | None) -> list[int] | str:
    """'uniform' | 'balanced' | '3,7,7' -> the spec, or the explicit class list (validated)."""
    if spec in ("uniform", "balanced"):
        return spec
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise EvalsuiteError(
            f"--classes {spec!r} is not 'uniform', 'balanced' or a comma list of class indices"
        ) from None
    if not values:
        raise EvalsuiteError("--classes list is empty; give e.g. --classes 0,3,7")
    if num_classes is None:
        raise EvalsuiteError(
            "--classes needs a class-conditional model or a classifier to guide towards"
        )
    bad = [v for v in values if not 0 <= v < num_classes]
    if bad:
        raise EvalsuiteError(
            f"--classes {bad[0]} is out of range; the model has classes 0..{num_classes - 1}"
        )
    return values


# Per-sample seeds (EDM-style): one 63-bit seed for the noise stream of sample i, from (seed, i).
def sample_seed(seed: int, index: int) -> int:
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_classes(
    spec: str, num_classes: int | None, seed: int, indices: list[int]
) -> np.ndarray | None:
    """Class label of each sample index; depends only on (spec, seed, index)."""
    if num_classes is None:
        return None
    resolved = resolve_class_spec(spec, num_classes)
    if resolved == "uniform":
        # i.i.d. uniform like the published protocol, from a stream separate from the noise.
        return np.array(
            [np.random.default_rng([seed, i, 1]).integers(num_classes) for i in indices],
            dtype=np.int64,
        )
    if resolved == "balanced":
        return np.array([i % num_classes for i in indices], dtype=np.int64)
    return np.array([resolved[i % len(resolved)] for i in indices], dtype=np.int64)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model space [-1,1] (B,C,H,W) -> uint8 (B,H,W,C), ((x+1)*127.5).clamp(0,255) truncated (§3)."""
    pixels = ((x.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class BatchSampler:
    """Generates the samples of given indices with fixed models and settings."""

    def __init__(
        self, models: SamplingModels, settings: SamplingSettings, device: str | torch.device
    ) -> None:
        self.models = models
        self.settings = settings
        self.device = torch.device(device)
        self.schedule = self._schedule()
        self.dtype = PRECISIONS[settings.precision]
        self.per_sample = self.device.type == "cpu"
        # Per-sample passes run single-threaded, several at once (one per core).
        self._workers = CoreWorkers()
        if self.dtype != torch.float32 and self.device.type != "cuda":
            raise EvalsuiteError(
                f"--precision {settings.precision} needs a CUDA device; use --precision fp32 on CPU"
            )
        self.model = models.model.model.to(self.device).eval()
        self.classifier = (
            None if models.classifier is None else models.classifier.model.to(self.device).eval()
        )

    def _schedule(self) -> DiffusionSchedule | None:
        diffusion = self.models.model.diffusion_config
        return make_schedule(
            diffusion.noise_schedule, diffusion.diffusion_steps, self.settings.steps
        )

    def _autocast(self) -> Any:
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _network(self, module: torch.nn.Module) -> Callable[..., torch.Tensor]:
        """The network as a callable; on CPU it runs one sample at a time (see `__call__`)."""

        def call(x: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            if not self.per_sample:
                with self._autocast():
                    return module(x, timesteps, **kwargs).float()
            grad_enabled = torch.is_grad_enabled()

            # One sample's pass; grad mode is thread-local, so carry the caller's over.
            def one(i: int) -> torch.Tensor:
                with torch.set_grad_enabled(grad_enabled):
                    row = {k: v[i : i + 1] for k, v in kwargs.items()}
                    return module(x[i : i + 1], timesteps[i : i + 1], **row).float()

            return torch.cat(self._workers.map(one, range(x.shape[0])))

        return call

    def __call__(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (B,H,W,3) images and int64 (B,) labels (or None) of the given sample indices.

        On CPU each sample's network passes run alone and on one thread: oneDNN's convolutions
        and GEMMs choose blockings and reduction splits by batch size and thread count, so a
        sample computed in a batch of 16 on 2 threads can differ in the last bit from the same
        sample alone on 1 thread. Run this way the bits depend on neither batch size, thread
        count nor process count (and small models run faster: batch-1 passes are dominated by
        thread synchronisation). On CUDA the batch runs whole.
        """
        if self.per_sample:
            with single_thread():
                return self._generate(indices)
        return self._generate(indices)

    def _generate(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        settings, config = self.settings, self.models.model.model_config
        diffusion = self.models.model.diffusion_config
        labels_np = sample_classes(
            settings.classes, self.models.num_classes, settings.seed, indices
        )
        labels = None if labels_np is None else torch.from_numpy(labels_np).to(self.device)
        noise = PerSampleNoise.from_seeds(
            [sample_seed(settings.seed, i) for i in indices], self.device
        )
        x_T = noise((len(indices), config.in_channels, config.image_size, config.image_size))
        model_fn = self._network(self.model)
        if settings.guidance == "cfg":
            # Classifier-free guidance on the eps (or x0) channels; variance from the cond. half.
            model_fn = classifier_free(
                model_fn,
                scale=settings.guidance_scale,
                null_label=config.null_label,
                guided_channels=config.in_channels,
            )
        denoise_fn = make_denoiser(
            model_fn,
            self.schedule,
            learn_sigma=diffusion.learn_sigma,
            predict_xstart=diffusion.predict_xstart,
            clip_denoised=settings.clip_denoised,
            rescale_timesteps=diffusion.rescale_timesteps,
            model_kwargs={"y": labels} if config.class_cond else None,
        )
        guidance = None
        if self.classifier is not None and settings.classifier_gradient_scale > 0:
            guidance = ClassifierGuidance(
                self._network(self.classifier),
                self.schedule,
                labels,
                settings.classifier_gradient_scale,
                rescale_timesteps=diffusion.rescale_timesteps,
            )
        if settings.sampler == "ddpm":
            x_0 = sample_ddpm(denoise_fn, self.schedule, x_T, noise=noise, guidance=guidance)
        else:
            x_0 = sample_ddim(
                denoise_fn, self.schedule, x_T, noise=noise, eta=settings.eta, guidance=guidance
            )
        return to_uint8(x_0), labels_np


def make_batch_sampler(
    models: SamplingModels, settings: SamplingSettings, device: str | torch.device
) -> BatchSampler:
    """The batch sampler for the model's kind (ADM checkpoint or diffusers folder)."""
    if isinstance(models.model, DiffusersModel):
        from evalsuite.pipeline.diffusers_sample import DiffusersBatchSampler

        return DiffusersBatchSampler(models, settings, device)
    return BatchSampler(models, settings, device)


def guidance_record(settings: SamplingSettings) -> dict[str, Any]:
    """The guidance of a batch as the sidecar records it: kind, scale and its convention."""
    record: dict[str, Any] = {
        "kind": settings.guidance,
        "scale": settings.guidance_scale,
        "convention": SCALE_CONVENTIONS[settings.guidance],
    }
    if settings.guidance == "cfg":
        record["classifier_scale"] = settings.classifier_scale
        record["variance"] = "learned variance taken from the conditional half"
    return record


def batch_identity(
    models: SamplingModels, settings: SamplingSettings, device: str | torch.device
) -> dict[str, Any]:
    """What identifies a sample batch: settings, checkpoints (sha256 + config), device type."""
    settings_record = asdict(settings)
    # Left out at their defaults, so batches made before CFG existed keep their identity.
    if settings.guidance == "classifier":
        del settings_record["guidance"]
    if settings.classifier_scale == 0:
        del settings_record["classifier_scale"]
    identity: dict[str, Any] = {
        "settings": settings_record,
        "model": {
            "sha256": models.model.sha256,
            "config": config_to_dict(models.model.model_config),
            "diffusion": config_to_dict(models.model.diffusion_config),
        },
        "classifier": None,
        "device_type": torch.device(device).type,
    }
    if models.classifier is not None:
        identity["classifier"] = {
            "sha256": models.classifier.sha256,
            "config": config_to_dict(models.classifier.model_config),
        }
    return json.loads(json.dumps(identity))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def sidecar_path(out: Path) -> Path:
    return out.with_suffix(".json")


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _part_path(folder: Path, lo: int, hi: int) -> Path:
    return folder / f"part_{lo:09d}_{hi:09d}.npz"


def _part_intact(path: Path, lo: int, hi: int) -> bool:
    """Cheap check of a part: its zip directory and the `images` header (hi - lo rows) read."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("images.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape = np.lib.format.read_array_header_1_0(member)[0]
            else:
                shape = np.lib.format.read_array_header_2_0(member)[0]
        return shape[:1] == (hi - lo,)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def _existing_parts(folder: Path) -> list[tuple[int, int, Path]]:
    """Finished parts (lo, hi, path); damaged ones (a truncated file) count as missing."""
    parts = []
    for path in sorted(folder.glob("part_*_*.npz")):
        _, lo_text, hi_text = path.stem.split("_", 2)
        if not (lo_text.isdigit() and hi_text.isdigit()):
            continue
        lo, hi = int(lo_text), int(hi_text)
        if not _part_intact(path, lo, hi):
            if dist.is_main():
                note(f"{path} is damaged; its samples {lo}..{hi - 1} will be generated again")
            continue
        parts.append((lo, hi, path))
    return parts


def _missing_batches(
    num_samples: int, parts: list[tuple[int, int, Path]], batch_size: int
) -> list[list[int]]:
    done = np.zeros(num_samples, dtype=bool)
    for lo, hi, _ in parts:
        done[lo:hi] = True
    batches: list[list[int]] = []
    run: list[int] = []
    for i in np.flatnonzero(~done).tolist():
        if run and (i != run[-1] + 1 or len(run) == batch_size):
            batches.append(run)
            run = []
        run.append(i)
    if run:
        batches.append(run)
    return batches


def _check_identity(existing: Path, identity: dict[str, Any], what: str, out: Path) -> bool:
    """True when `existing` records the same identity; refuses with a clear message otherwise."""
    try:
        recorded = json.loads(existing.read_text())
    except (OSError, json.JSONDecodeError):
        raise EvalsuiteError(
            f"{existing}: unreadable record of {what}; delete {out} and its .parts folder"
        ) from None
    old = recorded.get("identity", recorded)
    diffs = _differences(old, identity)
    if diffs:
        raise EvalsuiteError(
            f"{out}: {what} was made with different settings ({'; '.join(diffs[:3])}); "
            "use another --out, or delete it to start over"
        )
    return True


def _is_own_record(path: Path) -> bool:
    """True when `path` holds a sidecar written by `generate` (recognised by its content)."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    identity = recorded.get("identity") if isinstance(recorded, dict) else None
    return isinstance(identity, dict) and {"settings", "model"} <= set(identity)


def _parts_complete(out: Path, identity: dict[str, Any], num_samples: int) -> bool:
    """True when `OUT.parts/` is this run's and holds every sample (a kill before the sidecar)."""
    spec_file = parts_dir(out) / "identity.json"
    if not spec_file.exists():
        return False
    _check_identity(spec_file, identity, "the unfinished run in " + str(parts_dir(out)), out)
    return not _missing_batches(num_samples, _existing_parts(parts_dir(out)), 1)


def generate(
    models: SamplingModels,
    settings: SamplingSettings,
    out: str | Path,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
    extra_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate `settings.num_samples` samples into `out` (an ADM sample batch), resuming if possible.

    Returns the sidecar record (also written next to `out` as JSON).
    """
    settings.validate()
    models.check(settings)
    if batch_size <= 0:
        raise EvalsuiteError(f"--batch-size must be positive, got {batch_size}")
    out = Path(out)
    if out.suffix != ".npz":
        raise EvalsuiteError(f"--out {out}: expected a .npz file name (an ADM sample batch)")
    identity = batch_identity(models, settings, device)
    sidecar = sidecar_path(out)
    if sidecar.exists() and not _is_own_record(sidecar):
        raise EvalsuiteError(
            f"--out {out}: {sidecar} exists and is not evalsuite's record of a sample batch; "
            "it would be overwritten: choose another --out or move that file away"
        )
    if out.exists():
        if sidecar.exists():
            _check_identity(sidecar, identity, "the existing sample batch", out)
            if dist.is_main():
                # Left over when a run was killed after writing OUT, before removing its parts.
                shutil.rmtree(parts_dir(out), ignore_errors=True)
            return json.loads(sidecar.read_text())
        if not _parts_complete(out, identity, settings.num_samples):
            raise EvalsuiteError(
                f"--out {out} already exists and has no {sidecar.name} record of how it was "
                "made; choose another --out or delete it"
            )
    sampler = make_batch_sampler(models, settings, device)
    rank, world_size = dist.world()
    folder = parts_dir(out)
    spec_file = folder / "identity.json"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        if spec_file.exists():
            _check_identity(spec_file, identity, "the unfinished run in " + str(folder), out)
        else:
            with atomic_path(spec_file) as tmp:
                tmp.write_text(json.dumps({"identity": identity}, indent=2))
    dist.barrier()
    # Rank 0 lists the finished parts for everyone: a rank listing later could see parts
    # written meanwhile and share out the remaining batches differently.
    todo = dist.broadcast_from_main(
        _missing_batches(settings.num_samples, _existing_parts(folder), batch_size)
    )
    mine = todo[rank::world_size]
    done_before = settings.num_samples - sum(len(b) for b in todo)
    started = time.perf_counter()
    with tqdm(
        total=settings.num_samples,
        initial=done_before,
        desc="sampling",
        unit="img",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    ) as bar:
        for indices in mine:
            images, labels = sampler(indices)
            with (
                atomic_path(_part_path(folder, indices[0], indices[-1] + 1)) as tmp,
                open(tmp, "wb") as fh,
            ):
                np.savez(fh, images=images, **({} if labels is None else {"labels": labels}))
            bar.update(len(indices) * (world_size if rank == 0 else 1))
    dist.barrier()
    record: dict[str, Any] = {}
    if rank == 0:
        record = _assemble(
            out, folder, identity, settings, models, time.perf_counter() - started, extra_record
        )
    dist.barrier()
    return dist.broadcast_from_main(record)


def _assemble(
    out: Path,
    folder: Path,
    identity: dict[str, Any],
    settings: SamplingSettings,
    models: SamplingModels,
    seconds: float,
    extra_record: dict[str, Any] | None,
) -> dict[str, Any]:
    parts = _existing_parts(folder)
    covered = sum(hi - lo for lo, hi, _ in parts)
    if covered != settings.num_samples or _missing_batches(settings.num_samples, parts, 1):
        raise EvalsuiteError(
            f"{folder}: parts cover {covered} of {settings.num_samples} samples; rerun to finish"
        )
    images, labels = [], []
    for lo, hi, path in parts:
        try:
            with np.load(path) as data:
                images.append(data["images"])
                if "labels" in data.files:
                    labels.append(data["labels"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            path.unlink(missing_ok=True)
            raise EvalsuiteError(
                f"{path} is damaged ({type(error).__name__}) and was removed; rerun the same "
                f"command to generate its samples {lo}..{hi - 1} again"
            ) from None
    all_labels = np.concatenate(labels) if labels else None
    from evalsuite.pipeline.evaluate import versions

    record = {
        "identity": identity,
        "num_samples": settings.num_samples,
        "seeds": {
            "seed": settings.seed,
            "per_sample": "noise of sample i from SeedSequence([seed, i])",
        },
        "guidance": guidance_record(settings),
        "model_path": str(models.model.path),
        "classifier_path": None if models.classifier is None else str(models.classifier.path),
        "versions": versions(),
        "evalsuite": __version__,
        "last_run_seconds": round(seconds, 3),
        **(extra_record or {}),
    }
    # The sidecar first: a kill between the two writes leaves the parts and a record of them,
    # and the rerun assembles OUT again (the other order would leave OUT without its record).
    with atomic_path(sidecar_path(out)) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    write_sample_batch(out, np.concatenate(images), all_labels)
    shutil.rmtree(folder, ignore_errors=True)
    return record
