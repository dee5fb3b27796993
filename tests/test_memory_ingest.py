"""Ingesting documents: chunking, stable ids (no duplicates), bad input, both kinds of Chroma."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_agent.cli.ingest import ingest as ingest_command
from omni_agent.memory.ingest import (
    IngestError,
    chunk_file,
    chunk_markdown,
    chunk_text,
    ingest,
    read_document,
)
from omni_agent.memory.testing import ChromaServer
from omni_agent.memory.vector import VectorMemory, VectorStoreError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DOCS = ROOT / "examples" / "docs"


def make_pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF showing ``lines`` in Helvetica (built by hand for the test)."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
        "(" + ln.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '" for ln in lines) + " ET"
    objs = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{o}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "museum.md").write_text(
        "# Zorblax Museum\n\nThe Zorblax Museum opens at 9:40 am.\n\n## Tickets\n\nA ticket costs 7 glimmers.\n")
    (d / "tea.txt").write_text("Krindle tea steeps for four minutes. It tastes of pepper and pear.\n")
    (d / "notes.bin").write_bytes(b"\x00\x01 not a document")  # unsupported suffix: skipped
    (d / ".hidden.md").write_text("# Secret\n\nNever ingested.\n")
    return d


@pytest.fixture
def memory(tmp_path):
    return VectorMemory("docs", data_dir=tmp_path / "chroma")


# --------------------------------------------------------------------------- chunking

@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["Short one.", "A somewhat longer sentence with words!", "Why?",
                                 "\n\n", "word " * 30, "Ünïcödé text here."]), max_size=30),
       st.integers(60, 300), st.integers(0, 59))
def test_text_chunks_are_in_order_within_size_and_cover_all_text(pieces, size, overlap):
    text = " ".join(pieces)
    spans = chunk_text(text, chunk_size=size, overlap=overlap)
    assert all(e - s <= size for s, e in spans)
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_text_chunks_break_at_sentence_ends_and_overlap_whole_sentences():
    text = "One sentence here. Two sentence here. Three sentence here. Four sentence here."
    chunks = [text[s:e] for s, e in chunk_text(text, chunk_size=60, overlap=20)]
    assert chunks == ["One sentence here. Two sentence here. Three sentence here.",
                      "Three sentence here. Four sentence here."]


def test_markdown_chunks_never_span_two_sections_and_know_their_heading():
    md = ("# Museum\n\nIntro text.\n\n## Hours\n\nOpens at 9:40 am.\n\n```\n# not a heading\n```\n\n"
          "## Tickets\n\nSeven glimmers.\n")
    chunks = [(md[s:e], head) for s, e, head in chunk_markdown(md, chunk_size=500, overlap=0)]
    assert chunks == [
        ("# Museum\n\nIntro text.", "Museum"),
        ("## Hours\n\nOpens at 9:40 am.\n\n```\n# not a heading\n```", "Museum > Hours"),
        ("## Tickets\n\nSeven glimmers.", "Museum > Tickets"),
    ]


def test_a_chunk_from_the_middle_of_a_section_carries_its_heading(tmp_path):
    f = tmp_path / "long.md"
    f.write_text("# Ferry\n\n" + " ".join(f"Sentence number {i} about the ferry." for i in range(30)))
    chunks = chunk_file(f, chunk_size=200, overlap=0)
    assert len(chunks) > 2
    assert all(c.text.startswith(("# Ferry", "Ferry\n\n")) for c in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.metadata["heading"] == "Ferry" for c in chunks)


def test_chunk_ids_depend_on_file_and_position_only(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("First version.")
    before = chunk_file(f)
    f.write_text("Second version.")
    after = chunk_file(f)
    assert before[0].id == after[0].id and before[0].metadata["sha"] != after[0].metadata["sha"]


# --------------------------------------------------------------------------- reading

def test_pdf_text_is_read_page_by_page(tmp_path):
    f = tmp_path / "leaflet.pdf"
    f.write_bytes(make_pdf(["The Zorblax Museum opens at 9:40 am.", "Tickets cost 7 glimmers."]))
    assert read_document(f) == [("The Zorblax Museum opens at 9:40 am.\nTickets cost 7 glimmers.", 1)]
    assert chunk_file(f)[0].metadata["page"] == 1


@pytest.mark.parametrize("name,data,message", [
    ("binary.md", b"PK\x03\x04\x00\x00 zip bytes", "binary"),
    ("latin1.txt", "Caf\xe9 au lait".encode("latin-1"), "not valid UTF-8"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", "corrupt or unreadable PDF"),
])
def test_corrupt_documents_raise_a_clear_error(tmp_path, name, data, message):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(IngestError, match=message):
        read_document(f)


# --------------------------------------------------------------------------- ingest

def test_ingest_stores_supported_files_with_source_and_position(docs, memory):
    report = ingest([docs], memory, progress=False)
    assert report.errors == [] and report.files == 2
    assert memory.count() == report.chunks == 3
    hit = memory.search("How much is a ticket?", k=1)[0]
    assert hit.source == (docs / "museum.md").resolve().as_posix()
    assert hit.metadata["name"] == "museum.md" and hit.position == 1
    assert hit.metadata["heading"] == "Zorblax Museum > Tickets"
    assert memory.get(where={"name": ".hidden.md"}) == []


def test_reingesting_the_same_files_creates_no_duplicates_and_embeds_nothing(docs, memory):
    first = ingest([docs], memory, progress=False)
    ids = sorted(p.id for p in memory.get())
    again = ingest([docs, docs / "museum.md"], memory, progress=False)  # a file named twice too
    assert again.embedded == 0 and again.unchanged == first.chunks
    assert sorted(p.id for p in memory.get()) == ids


def test_reingesting_from_another_working_directory_keeps_the_same_ids(docs, memory, monkeypatch):
    ingest([docs], memory, progress=False)
    monkeypatch.chdir(docs)
    again = ingest(["."], memory, progress=False)
    assert again.embedded == 0 and memory.count() == 3


def test_reingesting_a_changed_file_updates_it_and_removes_chunks_it_lost(tmp_path, memory):
    f = tmp_path / "museum.md"
    f.write_text("# Museum\n\nOpens at 9:40 am.\n\n## Shop\n\nThe shop sells copper birds.\n")
    ingest([f], memory, progress=False)
    assert memory.count() == 2
    f.write_text("# Museum\n\nOpens at 10:15 am.\n")
    report = ingest([f], memory, progress=False)
    assert (report.embedded, report.removed) == (1, 1)
    assert [p.text for p in memory.get()] == ["# Museum\n\nOpens at 10:15 am."]


def test_corrupt_documents_are_reported_and_the_rest_is_ingested(docs, memory, tmp_path):
    ingest([docs], memory, progress=False)
    before = sorted(p.id for p in memory.get())
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (docs / "latin1.txt").write_bytes("Caf\xe9".encode("latin-1"))
    (docs / "ferry.md").write_text("# Ferry\n\nThe first ferry leaves at 6:25 am.\n")
    report = ingest([docs, tmp_path / "missing.md"], memory, progress=False)
    failed = {Path(p).name: msg for p, msg in report.errors}
    assert set(failed) == {"broken.pdf", "latin1.txt", "missing.md"}
    assert "corrupt" in failed["broken.pdf"] and "no such file" in failed["missing.md"]
    # Nothing that was there is lost, and the good new file is in.
    after = {p.id for p in memory.get()}
    assert set(before) <= after
    assert memory.search("When does the first ferry leave?", k=1)[0].metadata["name"] == "ferry.md"


def test_ingest_into_a_chroma_server_then_server_down_keeps_what_was_ingested(docs, tmp_path):
    data = tmp_path / "server-data"
    server = ChromaServer(data).start()
    try:
        mem = VectorMemory("docs", url=server.url)
        assert ingest([docs], mem, progress=False).errors == []
        ingest([docs], mem, progress=False)
        assert mem.count() == 3  # no duplicates on the server either
    finally:
        server.stop()
    extra = tmp_path / "extra.md"
    extra.write_text("# Extra\n\nNew facts.\n")
    with pytest.raises(VectorStoreError, match="not reachable"):
        ingest([extra], mem, progress=False)
    with ChromaServer(data, port=server.port):
        assert VectorMemory("docs", url=server.url, create=False).count() == 3


# --------------------------------------------------------------------------- the CLI

def test_cli_ingest_reports_and_shows_progress(docs, tmp_path):
    result = CliRunner().invoke(ingest_command, [str(docs), "--data-dir", str(tmp_path / "c"),
                                                 "--collection", "kb1", "--progress"])
    assert result.exit_code == 0, result.output
    assert "2 file(s), 3 chunk(s): 3 embedded" in result.stdout
    assert "holds 3 chunk(s)" in result.stdout
    assert "chunk" in result.stderr and "100%" in result.stderr  # the tqdm bar
    assert VectorMemory("kb1", data_dir=tmp_path / "c", create=False).count() == 3


def test_cli_ingest_fails_with_status_1_naming_the_bad_file_but_keeps_the_good(docs, tmp_path):
    (docs / "bad.pdf").write_bytes(b"%PDF-1.4 nope")
    result = CliRunner().invoke(ingest_command, [str(docs), "--data-dir", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "skipped" in result.stderr and "bad.pdf" in result.stderr
    assert VectorMemory("default", data_dir=tmp_path / "c", create=False).count() == 3


def test_cli_ingest_with_a_dead_server_is_a_clear_error(docs):
    from omni_agent.memory.testing import free_port

    result = CliRunner().invoke(ingest_command, [str(docs), "--chroma-url", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "cannot reach the Chroma server" in result.stderr


def test_omni_agent_ingest_command_ingests_the_example_docs(tmp_path):
    exe = Path(sys.executable).parent / "omni-agent"
    env = {**os.environ, "OMNI_AGENT_HOME": str(tmp_path)}
    env.pop("OMNI_AGENT_CHROMA_URL", None)
    out = subprocess.run([str(exe), "ingest", str(EXAMPLE_DOCS)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "chroma").is_dir()
    mem = VectorMemory(create=False, data_dir=tmp_path / "chroma")
    assert mem.search("What time does the Zorblax Museum open?", k=1)[0].metadata["name"] == "zorblax-museum.md"
