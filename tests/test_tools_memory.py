"""The memory_search tool against a real embedded Chroma store and the bundled MiniLM."""

import asyncio

import pytest

from omni_agent.agent import Agent
from omni_agent.errors import ToolError
from omni_agent.memory.vector import VectorMemory
from omni_agent.testing import ScriptedThinker
from omni_agent.tools import memory_search_tool
from omni_agent.tools.builtin import memory_search

pytestmark = pytest.mark.slow


@pytest.fixture
def memory(tmp_path):
    mem = VectorMemory("notes", data_dir=tmp_path / "chroma")
    mem.upsert(["The Zorblax Museum opens at 9:40 am.", "Krindle tea steeps for four minutes."],
               metadatas=[{"source": "museum.md", "position": 0}, {"source": "tea.md", "position": 0}])
    return mem


def test_memory_search_returns_the_closest_passage_with_its_source(memory):
    t = memory_search_tool(memory)
    out = asyncio.run(t.run({"query": "when does the museum open"}))
    first = out.splitlines()[0]
    assert first.startswith("[1] (museum.md#0)") and "9:40" in first


def test_memory_search_says_so_when_nothing_matches(memory):
    t = memory_search_tool(memory, min_score=0.9)
    assert asyncio.run(t.run({"query": "football results"})).startswith("No stored passage matches")


def test_memory_search_on_a_missing_store_is_an_error_result(tmp_path):
    t = memory_search_tool(data_dir=str(tmp_path / "nowhere"), collection="absent")
    with pytest.raises(ToolError, match="memory search failed"):
        asyncio.run(t.run({"query": "anything"}))


def test_agent_uses_memory_search_and_the_thinker_gets_the_passage(memory):
    thinker = ScriptedThinker([[{"tool_call": {"name": "memory_search",
                                               "arguments": {"query": "museum hours"}}}],
                               "It opens at 9:40."])
    agent = Agent(thinker=thinker, tools=[memory_search_tool(memory)])
    r = agent.ask("When does the museum open?")
    tool_msg = [m for m in thinker.requests[1].messages if m.role == "tool"][0]
    assert "9:40" in tool_msg.text and r.text == "It opens at 9:40."


def test_builtin_memory_search_reads_the_default_store(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_AGENT_HOME", str(tmp_path))
    VectorMemory().upsert(["Our office closes at 17:30 on Fridays."])
    out = asyncio.run(memory_search.run({"query": "office hours friday"}))
    assert "17:30" in out
