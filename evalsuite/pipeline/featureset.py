"""Inception features of an image batch, extracted in fixed chunks and cached (ADM protocol §1).

Features are computed in chunks of `CHUNK_SIZE` images at fixed index boundaries; each finished
chunk is written atomically to the user cache under a key built from the batch's content hash,
the weights' sha256 and the protocol version. An interrupted extraction therefore resumes at the
first missing chunk, whatever the batch size of the rerun. Under `torchrun` each rank extracts a
share of the chunks; rank 0 assembles them from the (node-local, shared) cache.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from evalsuite import PROTOCOL_VERSION
from evalsuite.pipeline.batches import ImageSource
from evalsuite.runtime import dist
from evalsuite.runtime.cache import atomic_path, cache_dir, cache_key
from evalsuite.runtime.errors import EvalsuiteError, note

# Images per cached chunk (env EVALSUITE_FEATURE_CHUNK overrides); part of the cache key.
CHUNK_SIZE = 1000


@dataclass
class FeatureSet:
    """Per-image Inception features.

    pool: (N, 2048) float32 pool_3 features; spatial: (N, 2023) float32 mixed_6/conv features in
    H,W,C order; logits: (N, 1008) float32 unbiased logits, or None with head-less weights.
    """

    pool: np.ndarray
    spatial: np.ndarray
    logits: np.ndarray | None

    def __len__(self) -> int:
        return len(self.pool)


class FeatureComputer:
    """Extracts and caches features of image sources with one Inception network."""

    def __init__(
        self,
        extractor: torch.nn.Module,
        weights_sha256: str,
        has_logits: bool,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        progress: bool = True,
        use_cache: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        self.extractor = extractor
        self.weights_sha256 = weights_sha256
        self.has_logits = has_logits
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.use_cache = use_cache
        self.chunk_size = chunk_size or int(os.environ.get("EVALSUITE_FEATURE_CHUNK", CHUNK_SIZE))

    def chunk_dir(self, fingerprint: str) -> Path:
        key = cache_key(
            kind="inception-features",
            content=fingerprint,
            weights=self.weights_sha256,
            protocol=PROTOCOL_VERSION,
            logits=self.has_logits,
            chunk=self.chunk_size,
        )
        return cache_dir() / "features" / key

    def compute(
        self, source: ImageSource, *, stop: int | None = None, desc: str = "features"
    ) -> FeatureSet:
        """Features of images [0, stop) of `source` (all of them by default)."""
        source.require_images()
        total = source.num_images if stop is None else min(stop, source.num_images)
        step = self.chunk_size
        bounds = [(lo, min(lo + step, total)) for lo in range(0, total, step)]
        folder = self.chunk_dir(source.fingerprint()) if self.use_cache else None
        chunks: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        todo = []
        for lo, hi in bounds:
            cached = _load_chunk(folder, lo, hi) if folder is not None else None
            if cached is not None:
                chunks[(lo, hi)] = cached
            else:
                todo.append((lo, hi))
        rank, world_size = dist.world()
        # Rank 0's list of missing chunks for everyone (another rank may already have saved some).
        todo = dist.broadcast_from_main(todo)
        mine = todo[rank::world_size]
        done_before = total - sum(hi - lo for lo, hi in todo)
        bar = tqdm(
            total=total,
            initial=done_before,
            desc=desc,
            unit="img",
            disable=not self.progress or rank != 0,
            dynamic_ncols=True,
        )
        with bar:
            for lo, hi in mine:
                chunk = self._extract(source.iter_batches(self.batch_size, lo, hi), bar)
                if folder is not None:
                    _save_chunk(folder, lo, hi, chunk)
                chunks[(lo, hi)] = chunk
        if world_size > 1:
            dist.barrier()
            if folder is None:
                raise EvalsuiteError("multi-process feature extraction needs the feature cache")
            for lo, hi in todo:
                if (lo, hi) not in chunks:
                    loaded = _load_chunk(folder, lo, hi)
                    if loaded is None:
                        raise EvalsuiteError(
                            f"chunk {lo}-{hi} computed by another rank is missing from {folder}; "
                            "set EVALSUITE_CACHE to a folder all ranks share"
                        )
                    chunks[(lo, hi)] = loaded
        parts = [chunks[b] for b in bounds]
        return _concat(parts, self.has_logits)

    @torch.inference_mode()
    def _extract(self, batches: Iterable[np.ndarray], bar: tqdm) -> dict[str, np.ndarray]:
        outputs: dict[str, list[np.ndarray]] = {}
        for batch in batches:
            images = torch.from_numpy(np.array(batch, copy=True)).to(self.device)
            features = self.extractor(images)
            for name, value in features.items():
                outputs.setdefault(name, []).append(value.float().cpu().numpy())
            bar.update(len(batch))
        return {name: np.concatenate(values) for name, values in outputs.items()}


def _chunk_path(folder: Path, lo: int, hi: int) -> Path:
    return folder / f"chunk_{lo:09d}_{hi:09d}.npz"


# What reading a damaged .npz can raise (truncated zip, bad CRC, bad deflate stream, bad header).
DAMAGED_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _load_chunk(folder: Path, lo: int, hi: int) -> dict[str, np.ndarray] | None:
    """A cached chunk, or None when it is missing or damaged (a damaged one is removed)."""
    path = _chunk_path(folder, lo, hi)
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            chunk = {name: data[name] for name in data.files}
        damage = None
        if "pool" not in chunk or any(len(v) != hi - lo for v in chunk.values()):
            damage = "wrong contents"
    except DAMAGED_NPZ_ERRORS as error:
        damage = type(error).__name__
    if damage is None:
        return chunk
    note(f"damaged feature cache entry {path} ({damage}); computing those features again")
    path.unlink(missing_ok=True)
    return None


def _save_chunk(folder: Path, lo: int, hi: int, chunk: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(_chunk_path(folder, lo, hi)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **chunk)


def _concat(parts: list[dict[str, np.ndarray]], has_logits: bool) -> FeatureSet:
    if not parts:
        raise EvalsuiteError("no images to extract features from")
    pool = np.concatenate([p["pool"] for p in parts])
    spatial = np.concatenate([p["spatial"] for p in parts])
    logits = np.concatenate([p["logits"] for p in parts]) if has_logits else None
    return FeatureSet(pool=pool, spatial=spatial, logits=logits)
