"""Images/s of evalsuite's InceptionFeatureExtractor vs torch-fidelity's own extractor.

Both run the same weights on the same random uint8 images, in the same batches, after one
warm-up batch each; the timed passes alternate between the two for `--rounds` rounds and the
best round of each is reported (the machine is shared, so the best is the least disturbed).
torch-fidelity's side is FeatureExtractorInceptionV3.forward itself, asked for '2048' only.

    .venv/bin/python benchmarks/bench_features.py --images 128 --size 64 --batch-size 64
"""

from __future__ import annotations

import argparse
import time

import torch

from evalsuite.features import InceptionFeatureExtractor, resolve_inception_weights
from evalsuite.features.weights import torch_fidelity_network


def images_per_second(run, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Throughput of `run` over all batches in one timed pass: (per wall second, per CPU second).

    Images per CPU second (process time, all threads) is less disturbed by other processes on a
    shared machine than wall time; both are reported.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for batch in batches:
            run(batch)
    count = sum(len(b) for b in batches)
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--weights", default=None, help="Inception weights file (default: resolved)"
    )
    args = parser.parse_args()

    weights = resolve_inception_weights(args.weights)
    ours = InceptionFeatureExtractor(weights).eval()
    theirs = torch_fidelity_network(weights.state_dict)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=generator
    )
    batches = list(images.split(args.batch_size))

    def run_ours(batch: torch.Tensor) -> torch.Tensor:
        return ours(batch)["pool"]

    def run_theirs(batch: torch.Tensor) -> torch.Tensor:
        return theirs(batch)[0]

    with torch.inference_mode():
        max_diff = (run_ours(batches[0]) - run_theirs(batches[0])).abs().max().item()
    rates: dict[str, list[tuple[float, float]]] = {"torch-fidelity": [], "evalsuite": []}
    for _ in range(args.rounds):
        rates["torch-fidelity"].append(images_per_second(run_theirs, batches))
        rates["evalsuite"].append(images_per_second(run_ours, batches))

    best_wall = {name: max(w for w, _ in values) for name, values in rates.items()}
    best_cpu = {name: max(c for _, c in values) for name, values in rates.items()}
    print(f"weights: {weights.describe()}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images "
        f"{args.size}x{args.size}, batch {args.batch_size}, {args.rounds} rounds"
    )
    for name, values in rates.items():
        rounds = ", ".join(f"{w:.2f}" for w, _ in values)
        print(
            f"{name:>15}: best {best_wall[name]:.2f} img/s wall (rounds: {rounds}); "
            f"best {best_cpu[name]:.2f} img per CPU-s"
        )
    print(
        f"speed-up: {best_wall['evalsuite'] / best_wall['torch-fidelity']:.2f}x wall, "
        f"{best_cpu['evalsuite'] / best_cpu['torch-fidelity']:.2f}x per CPU-second"
    )
    print(f"max |pool diff| vs torch-fidelity: {max_diff:.2e}")


if __name__ == "__main__":
    main()
