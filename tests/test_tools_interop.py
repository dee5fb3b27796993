"""LangChain interop: langchain-core tools work as ours; ours become langchain-core tools
and OpenAI schemas."""

import asyncio

import pytest
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tools import tool as lc_tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from omni_agent.agent import Agent
from omni_agent.errors import ToolError
from omni_agent.testing import ScriptedThinker
from omni_agent.tools import ToolRegistry, from_langchain, to_langchain, to_openai, tool


@lc_tool
def multiply(a: int, b: int) -> int:
    """Multiply two numbers.

    Args:
        a: First factor.
        b: Second factor.
    """
    return a * b


class GreetInput(BaseModel):
    name: str = Field(description="Who to greet")


class Greeter(BaseTool):
    name: str = "greeter"
    description: str = "Greets someone by name."
    args_schema: type[BaseModel] = GreetInput

    def _run(self, name: str) -> str:
        return f"Hello, {name}!"

    async def _arun(self, name: str) -> str:
        return f"Hello, {name}!"


def test_a_langchain_decorated_tool_works_as_ours():
    t = from_langchain(multiply)
    assert t.name == "multiply" and t.description == "Multiply two numbers."
    props = t.parameters["properties"]
    assert props["a"]["type"] == "integer" and props["a"]["description"] == "First factor."
    assert asyncio.run(t.run('{"a": 6, "b": 7}')) == "42"


def test_a_langchain_tool_validates_arguments_before_the_call():
    t = from_langchain(multiply)
    with pytest.raises(ToolError, match="invalid arguments for tool 'multiply'"):
        asyncio.run(t.run('{"a": "six", "b": 7}'))


def test_a_basetool_subclass_goes_straight_into_an_agent():
    thinker = ScriptedThinker([[{"tool_call": {"name": "greeter", "arguments": {"name": "Ada"}}}], "Done."])
    agent = Agent(thinker=thinker, tools=[Greeter(), multiply])
    r = agent.ask("greet Ada")
    assert r.tool_calls[0]["result"] == "Hello, Ada!"
    assert agent.tools.names == ["greeter", "multiply"]
    schema = agent.tools["greeter"].parameters
    assert schema["properties"]["name"]["description"] == "Who to greet"


@tool
def convert(amount: float, currency: str = "EUR") -> str:
    """Convert dollars.

    Args:
        amount: Dollars.
        currency: Target currency code.
    """
    return f"{amount * 2:.1f} {currency}"


@tool
async def aconvert(amount: float) -> str:
    """Convert dollars, asynchronously.

    Args:
        amount: Dollars.
    """
    return f"{amount * 3:.1f}"


def test_ours_become_langchain_tools_that_run_sync_and_async():
    lc = to_langchain(convert)
    assert isinstance(lc, StructuredTool) and lc.name == "convert"
    assert lc.invoke({"amount": 2, "currency": "GBP"}) == "4.0 GBP"
    assert asyncio.run(lc.ainvoke({"amount": 1})) == "2.0 EUR"
    alc = to_langchain(aconvert)
    assert asyncio.run(alc.ainvoke({"amount": 2})) == "6.0"


def test_the_langchain_view_has_our_schema():
    lc_schema = convert_to_openai_tool(to_langchain(convert))["function"]["parameters"]
    ours = to_openai(convert)["function"]["parameters"]
    assert lc_schema["properties"].keys() == ours["properties"].keys()
    assert lc_schema["required"] == ours["required"] == ["amount"]
    assert lc_schema["properties"]["amount"]["description"] == "Dollars."


def test_to_openai_accepts_plain_functions_and_langchain_tools():
    def ping(host: str) -> str:
        """Ping.

        Args:
            host: Where.
        """
        return "pong"

    assert to_openai(ping)["function"]["parameters"]["properties"]["host"]["description"] == "Where."
    assert to_openai(multiply)["function"]["name"] == "multiply"


def test_round_trip_ours_to_langchain_and_back():
    back = from_langchain(to_langchain(convert))
    assert asyncio.run(back.run({"amount": 5})) == "10.0 EUR"
    assert ToolRegistry([back]).names == ["convert"]
