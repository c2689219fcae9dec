"""What the Inception metrics see in the zoo's 16x16 images: real images, lightly perturbed.

Held-out images of the shapes data are scored against the zoo's reference statistics as they
are and after one perturbation each that keeps the shape and class of every image:

- no pixel noise: the same images rendered without the data's mild Gaussian pixel noise
  (`NOISE_STD` grey levels in `evalsuite/zoo/shapes.py`);
- soft edges: the noise-free image blurred (Gaussian, sigma 0.7 px), then the same noise added;
- blurred: the noisy image blurred (sigma 0.7 px): soft edges and smoothed noise;
- oversaturated: colours pushed away from grey and from mid-intensity, clipped to 0..255.

FID, precision and recall of each (evalsuite's scorer, ADM convention), so that a sample set's
numbers on the zoo can be read against what moves them in real images. Sample batches given as
arguments are scored alongside.

    .venv/bin/python zoo/diag_zoo_features.py [--num 1000] [SAMPLES.npz ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from scipy.ndimage import gaussian_filter
from zoo_scoring import scoring_setup

from evalsuite import zoo
from evalsuite.experiments.bootstrap import SampleScorer
from evalsuite.pipeline.batches import open_images
from evalsuite.zoo import shapes

BLUR_SIGMA = 0.7  # pixels
SATURATION = 1.6  # chroma gain around each pixel's grey level
CONTRAST = 1.3  # intensity gain around mid-grey


def blur(images: np.ndarray) -> np.ndarray:
    """Gaussian blur of float (N, H, W, 3) images over H and W only."""
    return gaussian_filter(images, sigma=(0, BLUR_SIGMA, BLUR_SIGMA, 0))


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def variants(num: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and the perturbed copies of held-out images 0..num-1."""
    images, labels = shapes.make_split("heldout", num)
    with mock.patch.object(shapes, "NOISE_STD", 0.0):
        clean, _ = shapes.make_split("heldout", num)
    noisy, clean = images.astype(np.float64), clean.astype(np.float64)
    grey = noisy.mean(axis=-1, keepdims=True)
    saturated = 127.5 + CONTRAST * (grey + SATURATION * (noisy - grey) - 127.5)
    return labels, {
        "real": images,
        "no pixel noise": clean.astype(np.uint8),
        f"soft edges (sigma {BLUR_SIGMA} px), noise kept": to_uint8(blur(clean) + noisy - clean),
        f"blurred (sigma {BLUR_SIGMA} px)": to_uint8(blur(noisy)),
        "oversaturated": to_uint8(saturated),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batches", nargs="*", help="sample batches (.npz) to score alongside")
    parser.add_argument("--num", type=int, default=1000, help="held-out images per variant")
    args = parser.parse_args()

    computer, reference, prepared = scoring_setup(str(zoo.reference()), ("fid", "pr"))

    labels, images = variants(args.num)
    print(f"{args.num} held-out images against the zoo reference ({reference.path.name})")
    print("| images | FID | precision | recall |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for k, (name, batch) in enumerate(images.items()):
            path = Path(scratch) / f"variant{k}.npz"
            np.savez(path, arr_0=batch, arr_1=labels)
            paths.append((name, path))
        paths += [(path, Path(path)) for path in args.batches]
        for name, path in paths:
            scores = SampleScorer(computer.compute(open_images(path)), prepared).scores()
            print(
                f"| {name} | {scores['fid']:.2f} | {scores['precision']:.3f} | "
                f"{scores['recall']:.3f} |"
            )


if __name__ == "__main__":
    main()
