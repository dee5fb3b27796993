"""``omni-agent ingest PATH...``: chunk documents into vector memory for RAG."""

from __future__ import annotations

import click

from .common import friendly_errors


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--collection", default="default", show_default=True,
              help="Collection to ingest into (one per agent or tenant).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Embedded Chroma directory. Default: $OMNI_AGENT_HOME/chroma or ~/.cache/omni-agent/chroma.")
@click.option("--chroma-url", envvar="OMNI_AGENT_CHROMA_URL",
              help="A Chroma server (http://HOST:PORT) instead of the embedded store.")
@click.option("--chunk-size", default=600, show_default=True, type=click.IntRange(min=50),
              help="Target chunk size in characters.")
@click.option("--overlap", default=100, show_default=True, type=click.IntRange(min=0),
              help="Characters of whole sentences repeated between neighbouring chunks.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="CPU threads for embedding (more helps only on an otherwise idle machine).")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: on a terminal).")
@friendly_errors
def ingest(paths, collection, data_dir, chroma_url, chunk_size, overlap, threads, progress):
    """Ingest text, markdown and PDF files (directories recursively) into vector memory.

    Re-ingesting the same files updates them in place: no duplicates. A file that cannot
    be read is reported and skipped; the others are ingested (exit status 1 if any failed).
    In a directory, links that lead out of it are not followed; each is listed.
    """
    from ..memory.embeddings import MiniLMEmbedding
    from ..memory.ingest import ingest as run_ingest
    from ..memory.vector import VectorMemory

    if overlap >= chunk_size:
        raise click.BadParameter("must be smaller than --chunk-size", param_hint="--overlap")
    memory = VectorMemory(collection, data_dir=data_dir, url=chroma_url or None, create=True,
                          embedding=MiniLMEmbedding(threads=threads))
    report = run_ingest(list(paths), memory, chunk_size=chunk_size, overlap=overlap, progress=progress)
    for path, why in report.skipped:  # left out on purpose: a link out of the folder
        click.echo(click.style(f"skipped {path}: {why}", fg="yellow"), err=True)
    for path, message in report.errors:
        click.echo(click.style(f"skipped {path}: {message}", fg="red"), err=True)
    click.echo(f"{report.summary()}; collection {collection!r} at {memory.location} holds "
               f"{memory.count()} chunk(s)")
    if report.errors:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(ingest)
