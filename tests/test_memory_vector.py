"""VectorMemory against both kinds of Chroma: the embedded PersistentClient and a real
``chroma run`` server process. The real bundled embedding model is used throughout."""

from __future__ import annotations

import pytest

from omni_agent.errors import ConfigError
from omni_agent.memory.embeddings import MiniLMEmbedding
from omni_agent.memory.testing import ChromaServer, free_port
from omni_agent.memory.vector import VectorMemory, VectorStoreError

FACTS = [
    ("The Zorblax Museum opens at 9:40 am.", {"source": "museum.md", "position": 0, "lang": "en"}),
    ("Krindle tea steeps for four minutes.", {"source": "tea.md", "position": 0, "lang": "en"}),
    ("Die Fähre nach Brask fährt um 6:25 Uhr ab.", {"source": "ferry.md", "position": 0, "lang": "de"}),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ChromaServer(tmp_path_factory.mktemp("chroma-server") / "data") as s:
        yield s


@pytest.fixture(params=["embedded", "server"])
def make_memory(request, tmp_path, server):
    """A factory for VectorMemory on the embedded store or on the Chroma server."""
    names = iter(range(1000))

    def make(collection: str | None = None, **kw):
        name = collection or f"c{next(names)}-{request.node.name.split('[')[0][-40:]}".replace("_", "-")
        if request.param == "server":
            return VectorMemory(name, url=server.url, **kw)
        return VectorMemory(name, data_dir=tmp_path / "chroma", **kw)

    make.kind = request.param
    return make


def _fill(mem: VectorMemory) -> list[str]:
    return mem.upsert([t for t, _ in FACTS], metadatas=[m for _, m in FACTS])


def test_search_returns_the_passage_closest_in_meaning_with_source_and_position(make_memory):
    mem = make_memory()
    _fill(mem)
    hits = mem.search("When does the museum open?", k=3)
    assert hits[0].text == "The Zorblax Museum opens at 9:40 am."
    assert hits[0].source == "museum.md" and hits[0].position == 0
    assert hits[0].score > 0.5 > hits[-1].score
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_upserting_the_same_texts_again_creates_no_duplicates(make_memory):
    mem = make_memory()
    first = _fill(mem)
    second = _fill(mem)
    assert first == second
    assert mem.count() == len(FACTS)


def test_upsert_with_an_existing_id_replaces_the_passage(make_memory):
    mem = make_memory()
    mem.upsert(["The museum opens at 9:40 am."], ids=["hours"], metadatas=[{"source": "a"}])
    mem.upsert(["The museum opens at 10:15 am."], ids=["hours"], metadatas=[{"source": "a"}])
    assert mem.count() == 1
    assert mem.get(["hours"])[0].text == "The museum opens at 10:15 am."


def test_metadata_filter_restricts_search(make_memory):
    mem = make_memory()
    _fill(mem)
    hits = mem.search("When does the museum open?", k=3, where={"source": "tea.md"})
    assert [h.source for h in hits] == ["tea.md"]
    hits = mem.search("opening time", k=3, where={"lang": {"$ne": "de"}})
    assert {h.source for h in hits} == {"museum.md", "tea.md"}


def test_delete_by_id_and_by_filter(make_memory):
    mem = make_memory()
    ids = _fill(mem)
    mem.delete([ids[0]])
    assert mem.count() == 2
    mem.delete(where={"lang": "de"})
    assert [p.source for p in mem.get()] == ["tea.md"]


def test_min_score_drops_unrelated_passages(make_memory):
    mem = make_memory()
    _fill(mem)
    assert mem.search("What is the capital of Peru?", k=3, min_score=0.5) == []


def test_collections_are_separate_per_agent(make_memory):
    a = make_memory()
    b = make_memory()
    _fill(a)
    assert b.count() == 0
    assert b.search("museum", k=3) == []


def test_reopened_collection_uses_the_bundled_embedding_not_chromas_default(make_memory, monkeypatch):
    # Chroma's default embedding downloads a model at run time; it must never be called.
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    def forbidden(self, *a, **kw):
        raise AssertionError("Chroma's default embedding function was used")

    monkeypatch.setattr(ONNXMiniLM_L6_V2, "__call__", forbidden)
    mem = make_memory()
    _fill(mem)
    again = make_memory(mem.collection_name, create=False)
    assert isinstance(again.collection._embedding_function, MiniLMEmbedding)
    assert again.search("When does the museum open?", k=1)[0].source == "museum.md"
    # Chroma's own add path (documents without embeddings) embeds with our function too.
    again.collection.add(ids=["raw"], documents=["Ottilie Vrask is the curator."])
    assert again.search("Who is the curator?", k=1)[0].id == "raw"


def test_bad_collection_name_is_a_config_error(make_memory):
    with pytest.raises(ConfigError, match="collection name"):
        make_memory("x")


def test_missing_collection_says_to_ingest_first(make_memory):
    with pytest.raises(VectorStoreError, match="omni-agent ingest"):
        make_memory("never-made", create=False)


def test_missing_data_dir_is_a_clear_error_and_is_not_created(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(VectorStoreError, match="no vector memory at .*nowhere.*ingest"):
        VectorMemory("docs", data_dir=missing, create=False)
    assert not missing.exists()


def test_reading_an_empty_directory_does_not_turn_it_into_a_store(tmp_path):
    with pytest.raises(VectorStoreError, match="holds no Chroma store"):
        VectorMemory("docs", data_dir=tmp_path, create=False)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_store_is_a_clear_error(tmp_path):
    (tmp_path / "chroma.sqlite3").write_bytes(b"\x13garbage" * 600)
    with pytest.raises(VectorStoreError, match="cannot open the vector memory.*move it aside"):
        VectorMemory("docs", data_dir=tmp_path, create=False)


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(VectorStoreError, match="is a file"):
        VectorMemory("docs", data_dir=f)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(VectorStoreError, match="cannot reach the Chroma server.*chroma run"):
        VectorMemory("docs", url=f"http://127.0.0.1:{free_port()}")


def test_bad_server_url_is_a_config_error():
    with pytest.raises(ConfigError, match="URL"):
        VectorMemory("docs", url="ftp://example")


def test_server_going_down_mid_use_is_a_clear_error_and_keeps_what_was_stored(tmp_path):
    data = tmp_path / "srv"
    server = ChromaServer(data).start()
    try:
        mem = VectorMemory("docs", url=server.url)
        _fill(mem)
    finally:
        server.stop()
    with pytest.raises(VectorStoreError, match="not reachable"):
        mem.search("museum", k=1)
    with pytest.raises(VectorStoreError, match="not reachable"):
        mem.upsert(["More text."])
    with ChromaServer(data, port=server.port):
        again = VectorMemory("docs", url=server.url, create=False)
        assert again.count() == len(FACTS)
        assert again.search("When does the museum open?", k=1)[0].source == "museum.md"


def test_embedded_store_persists_across_clients(tmp_path):
    VectorMemory("docs", data_dir=tmp_path).upsert(["Krindle tea tastes of pepper."], ids=["t"])
    # A fresh client object on the same directory (as after a restart) sees the passage.
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(tmp_path), settings=Settings(anonymized_telemetry=False))
    mem = VectorMemory("docs", client=client, create=False)
    assert mem.get(["t"])[0].text == "Krindle tea tastes of pepper."


def test_exists_is_true_only_for_a_collection_with_passages(tmp_path, server):
    assert not VectorMemory.exists("docs", data_dir=tmp_path / "none")
    mem = VectorMemory("docs", data_dir=tmp_path)
    assert not VectorMemory.exists("docs", data_dir=tmp_path)
    mem.upsert(["Something."])
    assert VectorMemory.exists("docs", data_dir=tmp_path)
    assert not VectorMemory.exists("other", data_dir=tmp_path)
    assert not VectorMemory.exists("docs", url=f"http://127.0.0.1:{free_port()}")


def test_empty_query_returns_nothing(make_memory):
    mem = make_memory()
    _fill(mem)
    assert mem.search("   ", k=3) == []


def test_metadata_of_unsupported_type_is_refused(make_memory):
    mem = make_memory()
    with pytest.raises(ValueError, match="metadata 'tags'"):
        mem.upsert(["x y z"], metadatas=[{"tags": {"a": 1}}])
