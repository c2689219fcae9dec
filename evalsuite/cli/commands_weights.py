"""`evalsuite weights fetch`: opt-in download of a standard Inception weight file (for IS)."""

from __future__ import annotations

import click

from evalsuite.cli import handle_errors, main

SOURCES = ("torch-fidelity", "pytorch-fid", "nvidia")


@main.group()
def weights() -> None:
    """Inception weight files: fetch a standard one (the only command that downloads)."""


@weights.command()
@click.argument(
    "source",
    type=click.Choice(SOURCES),
    default="torch-fidelity",
)
@click.option(
    "--url",
    "url_base",
    default=None,
    metavar="BASE",
    help="Download from BASE/<file name> instead of the publisher's release "
    "(also $EVALSUITE_WEIGHTS_URL_BASE); the same checks apply.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the server.",
)
@click.option("--force", is_flag=True, help="Download again even if the file is installed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def fetch(source: str, url_base: str | None, timeout: float, force: bool, quiet: bool) -> None:
    """Download SOURCE's Inception weight file (with the classifier head, so IS works).

    The file comes from its publisher's release URL, is checked against the sha256 prefix its
    name carries and against the offline trunk's features, and is installed into the user
    cache, where every later command uses it by default (`evalsuite info` shows it). Nothing
    else in evalsuite ever downloads.

    \b
    Examples:
      evalsuite weights fetch                  # torch-fidelity's file (the default)
      evalsuite weights fetch pytorch-fid
      evalsuite weights fetch nvidia --url https://my.mirror/inception
    """
    from evalsuite.features.fetch import RELEASES, fetch_weights, release_url

    release = RELEASES[source]
    click.echo(f"fetching {release.file} from {release_url(source, url_base)}", err=True)
    path, sha256 = fetch_weights(
        source, url_base=url_base, timeout=timeout, progress=not quiet, force=force
    )
    click.echo(f"installed {path} (sha256 {sha256[:12]}…): Inception Score is available")
