"""Tool definitions: schemas from type hints, pydantic models and docstrings; validation;
the per-agent registry; results as text."""

import asyncio
import threading
from enum import Enum
from typing import Annotated, Literal, Optional

import pytest
from pydantic import BaseModel, Field

from omni_agent.agent import Agent
from omni_agent.bus import TurnContext
from omni_agent.errors import ToolError
from omni_agent.testing import ScriptedThinker
from omni_agent.tools import Tool, ToolRegistry, function_schema, parse_docstring, tool


def test_types_defaults_and_required_come_from_the_signature():
    class Unit(str, Enum):
        C = "celsius"
        F = "fahrenheit"

    def f(city: str, days: int = 1, unit: Unit = Unit.C, tags: list[str] | None = None,
          mode: Literal["fast", "slow"] = "fast", ratio: Annotated[float, Field(ge=0, le=1)] = 0.5):
        """Forecast."""

    p = function_schema(f).parameters
    assert p["required"] == ["city"]
    props = p["properties"]
    assert props["city"]["type"] == "string" and props["days"] == {"default": 1, "type": "integer"}
    assert props["mode"]["enum"] == ["fast", "slow"]
    assert props["ratio"]["maximum"] == 1 and props["ratio"]["minimum"] == 0
    assert "$defs" in p and p["$defs"]["Unit"]["enum"] == ["celsius", "fahrenheit"]
    assert p["additionalProperties"] is False


def test_google_style_docstring_gives_descriptions():
    def f(city: str, days: int = 1):
        """Weather forecast for a city.

        Longer explanation here.

        Args:
            city (str): The city, e.g. "Paris".
            days: How many days ahead,
                at most seven.

        Returns:
            A sentence.
        """

    fs = function_schema(f)
    assert fs.description == "Weather forecast for a city.\n\nLonger explanation here."
    assert fs.parameters["properties"]["city"]["description"] == 'The city, e.g. "Paris".'
    assert fs.parameters["properties"]["days"]["description"] == "How many days ahead, at most seven."


def test_numpy_style_docstring_gives_descriptions():
    doc = """Convert money.

    Parameters
    ----------
    amount : float
        How much.
    src, dst : str
        Currency codes.

    Returns
    -------
    str
    """
    desc, args = parse_docstring(doc)
    assert desc == "Convert money."
    assert args == {"amount": "How much.", "src": "Currency codes.", "dst": "Currency codes."}


def test_sphinx_style_docstring_gives_descriptions():
    desc, args = parse_docstring("""Book a table.

    :param people: How many guests.
    :param str time: When, like 19:30.
    :returns: a confirmation
    """)
    assert desc == "Book a table." and args == {"people": "How many guests.", "time": "When, like 19:30."}


def test_a_function_without_a_docstring_has_an_empty_description_and_no_argument_texts():
    def f(city: str, days: int = 1):
        pass

    fs = function_schema(f)
    assert fs.description == ""
    assert fs.parameters["properties"] == {"city": {"type": "string"},
                                           "days": {"default": 1, "type": "integer"}}
    assert parse_docstring(None) == ("", {}) and parse_docstring("   ") == ("", {})


def test_a_docstring_without_sections_is_all_description_with_paragraphs_kept():
    assert parse_docstring("""Look it up.

    In the index,
    then online.
    """) == ("Look it up.\n\nIn the index, then online.", {})


def test_google_keyword_args_describe_arguments_too_and_text_after_sections_is_not_description():
    def f(query: str, limit: int = 5):
        """Search the notes.

        Args:
            query: Words to look for.

        Keyword Args:
            limit (int, optional): At most this many
                results.

        Returns:
            The matching notes.

        Notes after the sections are not the tool's description.
        """

    fs = function_schema(f)
    assert fs.description == "Search the notes."
    props = fs.parameters["properties"]
    assert props["query"]["description"] == "Words to look for."
    assert props["limit"]["description"] == "At most this many results."


def test_numpy_other_parameters_describe_arguments_of_a_tool():
    def f(amount: float, rounding: int = 2):
        """Convert money.

        Parameters
        ----------
        amount : float
            How much,
            in dollars.

        Other Parameters
        ----------------
        rounding : int
            Decimal places.
        """

    props = function_schema(f).parameters["properties"]
    assert props["amount"]["description"] == "How much, in dollars."
    assert props["rounding"]["description"] == "Decimal places."


def test_sphinx_fields_on_the_last_line_and_wrapped_give_descriptions():
    def f(host: str, port: int = 80):
        """Ping a host.

        :param host: Name or
            address.
        :type host: str
        :param int port: The port."""

    fs = function_schema(f)
    assert fs.description == "Ping a host."
    assert fs.parameters["properties"]["host"]["description"] == "Name or address."
    assert fs.parameters["properties"]["port"]["description"] == "The port."


def test_sphinx_roles_in_the_description_are_kept_as_text():
    desc, args = parse_docstring("""Call the tool with checked arguments (from
    :meth:`parse_arguments`); returns the result as text.
    """)
    assert desc == "Call the tool with checked arguments (from :meth:`parse_arguments`); returns the result as text."
    assert args == {}


def test_a_pydantic_model_argument_is_described_and_validated_into_the_model():
    class Address(BaseModel):
        street: str
        zip_code: str = Field(description="Postal code")

    @tool
    def ship(to: Address, express: bool = False) -> str:
        """Ship a parcel.

        Args:
            to: Where to.
            express: Next-day delivery.
        """
        assert isinstance(to, Address)
        return f"{to.street} {to.zip_code} {express}"

    p = ship.parameters
    assert p["properties"]["to"]["$ref"] == "#/$defs/Address"
    assert p["$defs"]["Address"]["properties"]["zip_code"]["description"] == "Postal code"
    out = asyncio.run(ship.run('{"to": {"street": "Main St", "zip_code": "123"}, "express": "true"}'))
    assert out == "Main St 123 True"


def test_titles_are_dropped_but_a_property_named_title_is_kept():
    def f(title: str, year: int):
        """A book."""

    p = function_schema(f).parameters
    assert "title" not in p and set(p["properties"]) == {"title", "year"}
    assert "title" not in p["properties"]["year"]


def test_turn_context_parameter_is_injected_not_described():
    def f(query: str, ctx: TurnContext):
        """Search."""

    fs = function_schema(f)
    assert list(fs.parameters["properties"]) == ["query"] and fs.injected == {"ctx": "ctx"}


def test_star_args_and_bad_names_are_refused_with_a_clear_error():
    def f(*items: str):
        """x"""

    with pytest.raises(ToolError, match="named one by one"):
        function_schema(f)
    with pytest.raises(ToolError, match="not allowed"):
        tool(name="has space")(lambda: None)


def test_arguments_are_validated_leniently_and_extras_refused():
    @tool
    def repeat(word: str, times: int = 2) -> str:
        """Repeat.

        Args:
            word: The word.
            times: How often.
        """
        return " ".join([word] * times)

    assert asyncio.run(repeat.run('{"word": "hi", "times": "3"}')) == "hi hi hi"
    with pytest.raises(ToolError, match="times: .*integer"):
        asyncio.run(repeat.run('{"word": "hi", "times": "lots"}'))
    with pytest.raises(ToolError, match="loud: not a parameter"):
        asyncio.run(repeat.run({"word": "hi", "loud": True}))
    with pytest.raises(ToolError, match="not valid JSON"):
        asyncio.run(repeat.run("{word: hi}"))


def test_results_become_text():
    class Out(BaseModel):
        ok: bool

    @tool
    def as_dict() -> dict:
        """d"""
        return {"a": 1}

    @tool
    def as_model() -> Out:
        """m"""
        return Out(ok=True)

    @tool
    def as_none() -> None:
        """n"""

    assert asyncio.run(as_dict.run()) == '{"a":1}'
    assert asyncio.run(as_model.run()) == '{"ok":true}'
    assert asyncio.run(as_none.run()) == "done"


async def test_sync_tools_run_off_the_event_loop_and_async_tools_on_it():
    threads = {}

    @tool
    def sync_tool() -> str:
        """s"""
        threads["sync"] = threading.current_thread()
        return "s"

    @tool
    async def async_tool() -> str:
        """a"""
        threads["async"] = threading.current_thread()
        return "a"

    reg = ToolRegistry([sync_tool, async_tool])
    assert await reg.call("sync_tool") == "s" and await reg.call("async_tool", "{}") == "a"
    assert threads["async"] is threading.current_thread()
    assert threads["sync"] is not threading.current_thread()


def test_a_tool_stays_callable_as_the_plain_function():
    @tool
    def double(x: int) -> int:
        """Double it."""
        return 2 * x

    assert isinstance(double, Tool) and double(4) == 8 and double.__doc__ == "Double it."


def test_each_agent_has_its_own_registry():
    @tool
    def only_a() -> str:
        """a"""
        return "a"

    a = Agent(thinker=ScriptedThinker("x"), tools=[only_a])
    b = Agent(thinker=ScriptedThinker("x"), tools=["calculator"])
    assert a.tools.names == ["only_a"] and b.tools.names == ["calculator"]
    b.tools.add("current_time")
    assert a.tools.names == ["only_a"]


def test_registry_takes_short_names_import_paths_and_its_own_decorator():
    reg = ToolRegistry(["current_time", "omni_agent.tools.builtin:calculator"])

    @reg.tool(timeout=3)
    def echo(text: str) -> str:
        """Echo."""
        return text

    assert reg.names == ["current_time", "calculator", "echo"] and reg["echo"].timeout == 3
    assert [s["function"]["name"] for s in reg.openai_schemas()] == reg.names


def test_registry_refuses_duplicates_and_names_the_tools_for_an_unknown_one():
    reg = ToolRegistry(["calculator"])
    with pytest.raises(ToolError, match="two tools are named 'calculator'"):
        reg.add(tool(name="calculator")(lambda expression: expression))
    with pytest.raises(ToolError, match="no tool named 'nope'; the tools are: calculator"):
        asyncio.run(reg.call("nope", "{}"))
    with pytest.raises(ToolError, match="is not a tool"):
        ToolRegistry([42])


def test_openai_schema_shape():
    @tool
    def ping(host: str) -> str:
        """Ping a host.

        Args:
            host: Name or address.
        """
        return "pong"

    assert ping.openai_schema() == {"type": "function", "function": {
        "name": "ping", "description": "Ping a host.",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["host"],
                       "properties": {"host": {"type": "string", "description": "Name or address."}}}}}


def test_optional_arguments_accept_null():
    @tool
    def find(name: Optional[str] = None) -> str:
        """Find."""
        return repr(name)

    assert asyncio.run(find.run('{"name": null}')) == "None"
