"""Ingest documents into vector memory: read, chunk, embed, upsert.

Text (``.txt``, ``.rst``), markdown (``.md``) and PDF (``.pdf``, through pypdf, if
installed) are split into chunks of about ``chunk_size`` characters that break at
paragraph and sentence ends, never across a markdown section. Each chunk records its
``source`` (the file's absolute path), ``position`` (its number in the file), character
offsets, the markdown heading it sits under and, for PDFs, the page.

Ids are stable: ``hash(source, position)``. Re-ingesting a file replaces its chunks in
place, removes chunks the file no longer has, and skips re-embedding chunks whose text is
unchanged, so ingesting the same files twice creates no duplicates and costs little.

>>> report = ingest(["examples/docs"], VectorMemory("default"))
>>> report.chunks, report.errors
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Iterable, Sequence

from omni_agent.errors import OmniAgentError

from .vector import VectorMemory

__all__ = [
    "Chunk",
    "IngestError",
    "IngestReport",
    "chunk_text",
    "chunk_markdown",
    "read_document",
    "chunk_file",
    "find_files",
    "ingest",
    "SUPPORTED_SUFFIXES",
]

TEXT_SUFFIXES = {".txt", ".text", ".rst"}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdx"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | PDF_SUFFIXES


class IngestError(OmniAgentError):
    """A document could not be ingested (missing, unreadable, corrupt, not text)."""


@dataclass(slots=True)
class Chunk:
    """One piece of a document, ready to embed."""

    id: str
    text: str
    source: str
    position: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestReport:
    """What an ingest did. ``errors`` holds ``(path, message)`` for each file that failed;
    the other files were ingested all the same. ``skipped`` holds ``(path, why)`` for each
    link in a directory that leads out of it or nowhere (not followed, not a failure)."""

    files: int = 0
    chunks: int = 0
    embedded: int = 0  # new or changed chunks (embedded and stored)
    unchanged: int = 0  # already stored with the same text: skipped
    removed: int = 0  # stale chunks of re-ingested files
    load_seconds: float = 0.0  # loading the embedding model (not in ``seconds``)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # reading, chunking, embedding and storing
    # (path, why) for each entry of a directory left out on purpose: its real path (links
    # resolved) is outside the directory, or the link cannot be resolved. Not a failure.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def chunks_per_s(self) -> float:
        """Throughput of embedding and storing (chunks actually embedded per second)."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        s = (f"{self.files} file(s), {self.chunks} chunk(s): {self.embedded} embedded, "
             f"{self.unchanged} unchanged, {self.removed} removed in {self.seconds:.1f}s")
        if self.embedded:
            s += f" ({self.chunks_per_s:.0f} chunks/s)"
        if self.errors:
            s += f"; {len(self.errors)} file(s) failed"
        if self.skipped:
            s += f"; {len(self.skipped)} path(s) skipped (links not followed)"
        return s


# --------------------------------------------------------------------------- chunking

_PARA = re.compile(r"\n[ \t]*\n+")
# A sentence ends at . ! ? (optionally closed by a quote or bracket) followed by space.
_SENT = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _units(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Spans of sentences (paragraph ends included) within text[start:end], none longer
    than ``limit`` (over-long sentences are cut at spaces, or hard at ``limit``)."""
    spans: list[tuple[int, int]] = []
    pos = start
    para_breaks = [m.start() for m in _PARA.finditer(text, start, end)] + [end]
    for pb in para_breaks:
        seg_start = pos
        for m in _SENT.finditer(text, seg_start, pb):
            spans.append((seg_start, m.start() + len(m.group(0).rstrip())))
            seg_start = m.end()
        if seg_start < pb:
            spans.append((seg_start, pb))
        pos = pb
    out: list[tuple[int, int]] = []
    for s, e in spans:
        # trim whitespace so chunks do not start or end with blank lines
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        while e - s > limit:
            cut = text.rfind(" ", s, s + limit)
            cut = cut if cut > s else s + limit
            out.append((s, cut))
            s = cut
            while s < e and text[s].isspace():
                s += 1
        if e > s:
            out.append((s, e))
    return out


def _pack(text: str, start: int, end: int, chunk_size: int, overlap: int) -> list[tuple[int, int]]:
    """Pack sentence spans into chunks of at most ``chunk_size`` characters; each chunk
    after the first repeats up to ``overlap`` characters of whole sentences before it."""
    units = _units(text, start, end, chunk_size)
    chunks: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j = i
        while j + 1 < len(units) and units[j + 1][1] - units[i][0] <= chunk_size:
            j += 1
        chunks.append((units[i][0], units[j][1]))
        if j + 1 >= len(units):
            break
        # next chunk: back up over whole sentences that fit in the overlap
        nxt = j + 1
        while nxt - 1 > i and units[j][1] - units[nxt - 1][0] <= overlap and \
                units[j + 1][1] - units[nxt - 1][0] <= chunk_size:
            nxt -= 1
        i = nxt
    return chunks


def chunk_text(text: str, *, chunk_size: int = 600, overlap: int = 100) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the chunks of plain text."""
    _check_sizes(chunk_size, overlap)
    return _pack(text, 0, len(text), chunk_size, overlap)


def chunk_markdown(text: str, *, chunk_size: int = 600, overlap: int = 100,
                   ) -> list[tuple[int, int, str]]:
    """Chunks of markdown as ``(start, end, heading_path)``: split at headings first (a
    chunk never spans two sections; headings inside code fences do not count), then
    packed like plain text. ``heading_path`` is e.g. ``"Zorblax Museum > Opening hours"``."""
    _check_sizes(chunk_size, overlap)
    sections: list[tuple[int, int, str]] = []
    stack: list[tuple[int, str]] = []
    sec_start, sec_head = 0, ""
    in_fence = False
    offset = 0
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line.rstrip("\r\n"))
        if m:
            if offset > sec_start:
                sections.append((sec_start, offset, sec_head))
            level, title = len(m.group(1)), m.group(2).strip()
            stack = [(lv, t) for lv, t in stack if lv < level] + [(level, title)]
            sec_start, sec_head = offset, " > ".join(t for _, t in stack)
        offset += len(line)
    sections.append((sec_start, len(text), sec_head))
    out = []
    for s, e, head in sections:
        for cs, ce in _pack(text, s, e, chunk_size, overlap):
            out.append((cs, ce, head))
    return out


def _check_sizes(chunk_size: int, overlap: int) -> None:
    if chunk_size < 50:
        raise ValueError(f"chunk_size must be at least 50 characters, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap must be >= 0 and smaller than chunk_size, got {overlap}")


# --------------------------------------------------------------------------- reading

def read_document(path: str | Path) -> list[tuple[str, int | None]]:
    """The text of a document as ``[(text, page)]`` (page is None except for PDFs).

    Raises :class:`IngestError` for a missing, unreadable, binary or corrupt file."""
    p = Path(path)
    if not p.exists():
        raise IngestError(f"{p}: no such file or directory")
    if not p.is_file():
        raise IngestError(f"{p}: not a regular file")
    if p.suffix.lower() in PDF_SUFFIXES:
        return _read_pdf(p)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise IngestError(f"{p}: cannot read it ({e.strerror or e})") from e
    if b"\x00" in data[:8192]:
        raise IngestError(f"{p}: looks like a binary file, not text (supported: "
                          f"{', '.join(sorted(SUPPORTED_SUFFIXES))})")
    try:
        return [(data.decode("utf-8-sig"), None)]
    except UnicodeDecodeError as e:
        raise IngestError(f"{p}: not valid UTF-8 text (byte {e.start}); convert it to UTF-8") from e


def _read_pdf(p: Path) -> list[tuple[str, int | None]]:
    try:
        from pypdf import PdfReader
    except ImportError as e:
        raise IngestError(f"{p}: reading PDFs needs pypdf: pip install pypdf") from e
    try:
        reader = PdfReader(str(p))
        if reader.is_encrypted:
            raise IngestError(f"{p}: the PDF is encrypted; decrypt it first")
        return [(page.extract_text() or "", n + 1) for n, page in enumerate(reader.pages)]
    except IngestError:
        raise
    except Exception as e:  # noqa: BLE001 - pypdf raises many kinds on damaged files
        raise IngestError(f"{p}: corrupt or unreadable PDF ({type(e).__name__}: {e})") from e


def chunk_id(source: str, position: int) -> str:
    """The stable id of a chunk: the same file and position always give the same id."""
    return hashlib.sha1(f"{source}\x00{position}".encode()).hexdigest()[:32]


def chunk_file(path: str | Path, *, chunk_size: int = 600, overlap: int = 100) -> list[Chunk]:
    """Read and chunk one file; raises :class:`IngestError` if it cannot be read."""
    p = Path(path)
    source = p.resolve().as_posix()
    is_md = p.suffix.lower() in MARKDOWN_SUFFIXES
    chunks: list[Chunk] = []
    for text, page in read_document(p):
        text = text.replace("\r\n", "\n")
        if is_md:
            spans = chunk_markdown(text, chunk_size=chunk_size, overlap=overlap)
        else:
            spans = [(s, e, "") for s, e in chunk_text(text, chunk_size=chunk_size, overlap=overlap)]
        for s, e, head in spans:
            body = text[s:e]
            # A chunk from the middle of a section gets its heading path in front, so it is
            # found by the section's topic too (the first chunk already starts with it).
            last = head.rsplit(" > ", 1)[-1] if head else ""
            stored = body if not head or body.lstrip("# ").startswith(last) else f"{head}\n\n{body}"
            pos = len(chunks)
            meta: dict[str, Any] = {"source": source, "name": p.name, "position": pos,
                                    "start": s, "end": e,
                                    "sha": hashlib.sha1(stored.encode()).hexdigest()[:16]}
            if head:
                meta["heading"] = head
            if page is not None:
                meta["page"] = page
            chunks.append(Chunk(chunk_id(source, pos), stored, source, pos, meta))
    return chunks


def find_files(paths: Iterable[str | Path],
               ) -> tuple[list[Path], list[tuple[str, str]], list[tuple[str, str]]]:
    """Expand paths into the files to ingest, sorted. A directory contributes its supported
    files (recursively, hidden ones skipped); a file named explicitly is always taken.

    A directory contributes only what lies inside it once links are resolved: an entry
    whose real path is outside the directory (a link to ``/etc/passwd``, to a folder
    elsewhere) is left out and listed in ``skipped``; a link that stays inside stands for
    the file it points to. Returns ``(files, errors, skipped)``: errors are ``(path,
    message)`` for missing paths, skipped are ``(path, why)``.
    """
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            root = p.resolve()
            for f in sorted(p.rglob("*")):
                if any(part.startswith(".") for part in f.relative_to(p).parts):
                    continue
                real, why = _resolve_within(f, root)
                if real is not None:
                    if real.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES and \
                            not any(part.startswith(".") for part in real.relative_to(root).parts):
                        files.append(real if f.is_symlink() else f)
                elif f.is_dir() or f.suffix.lower() in SUPPORTED_SUFFIXES:
                    skipped.append((str(f), why))
        elif p.is_file():
            files.append(p)
        else:
            errors.append((str(raw), f"{raw}: no such file or directory"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique, errors, skipped


def _resolve_within(f: Path, root: Path) -> tuple[Path | None, str]:
    """``(real path, "")`` when ``f`` is inside ``root`` once its links are resolved, else
    ``(None, why not)``."""
    try:
        real = f.resolve()
    except (OSError, RuntimeError) as e:  # a link loop
        return None, f"cannot resolve the link ({e}): not followed"
    if real.is_relative_to(root):
        return real, ""
    return None, f"it links to {real}, outside {root}: not followed (give its real path to ingest it)"


# --------------------------------------------------------------------------- ingest

def ingest(
    paths: Sequence[str | Path],
    memory: VectorMemory,
    *,
    chunk_size: int = 600,
    overlap: int = 100,
    batch_size: int = 64,
    progress: bool | None = None,
) -> IngestReport:
    """Ingest files and directories into ``memory``; returns an :class:`IngestReport`.

    A file that cannot be read is reported in ``report.errors`` and skipped; the others
    are ingested. A store failure (e.g. the Chroma server went down) raises
    :class:`~omni_agent.memory.vector.VectorStoreError`; what was stored before stays.
    ``progress``: show a tqdm bar (``None``: only on a terminal).
    """
    from tqdm.auto import tqdm

    _check_sizes(chunk_size, overlap)
    report = IngestReport()
    t0 = perf_counter()
    files, report.errors, report.skipped = find_files(paths)
    # Chunk everything first (cheap) so the bar knows the total.
    planned: list[tuple[Path, list[Chunk]]] = []
    for f in files:
        try:
            planned.append((f, chunk_file(f, chunk_size=chunk_size, overlap=overlap)))
        except IngestError as e:
            report.errors.append((str(f), str(e)))
    report.files = len(planned)
    report.chunks = sum(len(c) for _, c in planned)
    loaded = False
    bar = tqdm(total=report.chunks, unit="chunk", desc="ingest",
               disable=(not progress) if progress is not None else None)
    try:
        for f, chunks in planned:
            source = f.resolve().as_posix()
            stored = memory.metadata_by_id(where={"source": source})
            todo = [c for c in chunks if stored.get(c.id, {}).get("sha") != c.metadata["sha"]]
            if todo and not loaded:
                # Timed apart: a few seconds of model load would hide the throughput.
                t1 = perf_counter()
                load = getattr(memory.embedding, "load", None)
                if load is not None:
                    load()
                report.load_seconds = perf_counter() - t1
                loaded = True
            report.unchanged += len(chunks) - len(todo)
            bar.update(len(chunks) - len(todo))
            for i in range(0, len(todo), batch_size):
                batch = todo[i:i + batch_size]
                memory.upsert([c.text for c in batch], ids=[c.id for c in batch],
                              metadatas=[c.metadata for c in batch])
                report.embedded += len(batch)
                bar.update(len(batch))
            # Only after the new chunks are stored: drop positions the file no longer has.
            stale = sorted(set(stored) - {c.id for c in chunks})
            if stale:
                memory.delete(stale)
                report.removed += len(stale)
    finally:
        bar.close()
        report.seconds = perf_counter() - t0 - report.load_seconds
    return report
