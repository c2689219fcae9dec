"""Image batches on disk: ADM `.npz` batches (streamed) and folders of images (ADM protocol §3).

An ADM batch stores `arr_0` (N,H,W,3) uint8 RGB and optionally `arr_1` (N,) int64 labels and the
reference statistics `mu`, `sigma`, `mu_s`, `sigma_s`. A 50k x 256² batch is 9.8 GB, so `arr_0` is
read in slices straight out of the zip member, never loaded whole.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from evalsuite.runtime.cache import atomic_path, sha256_file
from evalsuite.runtime.errors import EvalsuiteError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


@dataclass(frozen=True)
class _Member:
    """Location and layout of one `.npy` member inside an `.npz` zip."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int


def _read_member_header(zf: zipfile.ZipFile, name: str, path: Path) -> _Member:
    with zf.open(name) as fh:
        try:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
        except ValueError as error:
            raise EvalsuiteError(
                f"{path}: member {name} is not a valid .npy array ({error})"
            ) from None
        return _Member(name, tuple(shape), np.dtype(dtype), fortran, fh.tell())


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise EvalsuiteError(
            f"{path}: no such file; expected an ADM .npz batch or a folder of images"
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise EvalsuiteError(
            f"{path}: not a readable .npz file ({error}); expected an ADM batch written by np.savez"
        ) from None


class NpzBatch:
    """An ADM batch file; `arr_0` is streamed in slices.

    Attributes:
        path: the file.
        num_images, image_shape: N and (H, W, 3) of `arr_0` (None when the file has no `arr_0`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with _open_zip(self.path) as zf:
            names = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}
            try:
                bad = zf.testzip() if self.path.stat().st_size < (64 << 20) else None
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise EvalsuiteError(f"{self.path}: truncated or corrupt .npz ({error})") from None
            if bad is not None:
                raise EvalsuiteError(
                    f"{self.path}: corrupt member {bad}; rewrite or re-download it"
                )
            self._members = {
                key: _read_member_header(zf, name, self.path) for key, name in names.items()
            }
        self.keys = tuple(self._members)
        images = self._members.get("arr_0")
        self.num_images = 0
        self.image_shape: tuple[int, ...] | None = None
        if images is not None:
            _check_image_layout(images.shape, images.dtype, f"{self.path}: arr_0")
            if images.fortran_order:
                raise EvalsuiteError(f"{self.path}: arr_0 is Fortran-ordered; save it C-contiguous")
            self.num_images = images.shape[0]
            self.image_shape = images.shape[1:]

    def require_images(self) -> None:
        """Raise unless the file holds `arr_0` images."""
        if "arr_0" not in self._members:
            raise EvalsuiteError(
                f"{self.path}: no arr_0 in the .npz (keys: {', '.join(self.keys) or 'none'}); "
                "expected images as arr_0 (N,H,W,3) uint8"
            )

    def has(self, key: str) -> bool:
        return key in self._members

    def read(self, key: str) -> np.ndarray:
        """Load one (small) member whole, e.g. `arr_1`, `mu`, `sigma`."""
        with _open_zip(self.path) as zf, zf.open(self._members[key].name) as fh:
            try:
                return npy_format.read_array(fh, allow_pickle=False)
            except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:
                raise EvalsuiteError(f"{self.path}: cannot read {key} ({error})") from None

    def stored_stats(self) -> dict[str, np.ndarray] | None:
        """The reference statistics stored in the file (`mu`, `sigma`, and `mu_s`, `sigma_s` if present)."""
        if "mu" not in self._members:
            return None
        return {key: self.read(key) for key in STAT_KEYS if key in self._members}

    def labels(self) -> np.ndarray | None:
        return self.read("arr_1") if "arr_1" in self._members else None

    def iter_batches(
        self, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[np.ndarray]:
        """Yield uint8 (B,H,W,3) slices of `arr_0[start:stop]` read straight from the zip."""
        self.require_images()
        member = self._members["arr_0"]
        stop = self.num_images if stop is None else min(stop, self.num_images)
        item_bytes = int(np.prod(member.shape[1:])) * member.dtype.itemsize
        with _open_zip(self.path) as zf, zf.open(member.name) as fh:
            fh.seek(member.data_offset + start * item_bytes)
            for lo in range(start, stop, batch_size):
                count = min(batch_size, stop - lo)
                buffer = fh.read(count * item_bytes)
                if len(buffer) != count * item_bytes:
                    raise EvalsuiteError(
                        f"{self.path}: arr_0 ends early at image {lo + len(buffer) // item_bytes} of "
                        f"{self.num_images} (truncated file?)"
                    )
                yield np.frombuffer(buffer, dtype=member.dtype).reshape((count, *member.shape[1:]))

    @functools.cached_property
    def _fingerprint(self) -> str:
        return sha256_file(self.path)

    def fingerprint(self) -> str:
        """sha256 of the file's bytes (computed once)."""
        return self._fingerprint

    def describe(self) -> str:
        return f"{self.path} ({self.num_images} images {_shape_text(self.image_shape)})"


class ImageFolder:
    """A folder of RGB images of one size, read in sorted file-name order."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.files = sorted(
            p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise EvalsuiteError(
                f"{self.path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                "expected a folder of RGB images or an ADM .npz batch"
            )
        self.num_images = len(self.files)
        self.image_shape = self._load(self.files[0]).shape
        self.keys = ("arr_0",)

    def _load(self, file: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as error:
            raise EvalsuiteError(f"{file}: not a readable image ({error})") from None

    def require_images(self) -> None:
        return None

    def has(self, key: str) -> bool:
        return False

    def stored_stats(self) -> None:
        return None

    def labels(self) -> None:
        return None

    def iter_batches(
        self, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[np.ndarray]:
        stop = self.num_images if stop is None else min(stop, self.num_images)
        for lo in range(start, stop, batch_size):
            images = [self._load(f) for f in self.files[lo : min(lo + batch_size, stop)]]
            for file, image in zip(self.files[lo:], images, strict=False):
                if image.shape != self.image_shape:
                    raise EvalsuiteError(
                        f"{file}: image is {image.shape[1]}x{image.shape[0]} but the folder's first "
                        f"image is {self.image_shape[1]}x{self.image_shape[0]}; resize them to one size"
                    )
            yield np.stack(images)

    @functools.cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for file in self.files:
            digest.update(str(file.relative_to(self.path)).encode())
            digest.update(sha256_file(file).encode())
        return digest.hexdigest()

    def fingerprint(self) -> str:
        """sha256 over the sorted (relative name, file sha256) pairs (computed once)."""
        return self._fingerprint

    def describe(self) -> str:
        return f"{self.path}/ ({self.num_images} images {_shape_text(self.image_shape)})"


ImageSource = NpzBatch | ImageFolder


def open_images(path: str | os.PathLike[str], role: str = "images") -> ImageSource:
    """Open an ADM `.npz` batch or a folder of images; raise `EvalsuiteError` on anything else."""
    path = Path(path)
    if path.is_dir():
        return ImageFolder(path)
    if not path.exists():
        raise EvalsuiteError(
            f"{role} {path}: no such file or folder; expected an ADM .npz batch or a folder of images"
        )
    return NpzBatch(path)


def _check_image_layout(shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    if len(shape) != 4:
        raise EvalsuiteError(f"{what} has shape {shape}; expected rank 4 (N,H,W,3) uint8 images")
    if shape[-1] != 3:
        raise EvalsuiteError(
            f"{what} has shape {shape} ({shape[-1]} channels last); expected (N,H,W,3) RGB images"
        )
    if dtype != np.uint8:
        kind = (
            " (float pixels; NaN or out-of-range values cannot be scored)"
            if dtype.kind == "f"
            else ""
        )
        raise EvalsuiteError(
            f"{what} has dtype {dtype}{kind}; expected uint8 pixels in [0,255] "
            "(convert with ((x+1)*127.5).clip(0,255).astype(np.uint8))"
        )


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "" if shape is None else "x".join(str(s) for s in shape)


def write_sample_batch(
    path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray | None
) -> None:
    """Write an ADM sample batch (`arr_0` uint8 NHWC, `arr_1` int64) atomically."""
    arrays = {"arr_0": np.ascontiguousarray(images, dtype=np.uint8)}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
    write_npz(path, arrays)


# Timestamp of every member of the .npz files evalsuite writes (np.savez stamps the current time).
NPZ_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` (uncompressed, atomically) with fixed member timestamps: same arrays, same bytes.

    So a run directory written by torchrun, by cluster shards or after a resume is byte-identical
    to one written by a single process.
    """
    with (
        atomic_path(Path(path)) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=NPZ_DATE_TIME)
            with archive.open(info, "w", force_zip64=True) as fh:
                npy_format.write_array(fh, np.asanyarray(value), allow_pickle=False)
