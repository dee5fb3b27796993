"""The tool system: ``@tool`` on a typed function, per-agent registries, schemas, interop.

::

    from omni_agent.tools import tool, current_time, calculator

    @tool
    def weather(city: str) -> str:
        '''Today's weather in a city.

        Args:
            city: The city, e.g. "Paris".
        '''
        ...

    agent = Agent(thinker=..., tools=[weather, current_time, calculator])

See docs/tools.md for the tool middleware, constrained decoding and the router.
"""

from .builtin import calculator, current_time, memory_search, memory_search_tool
from .interop import from_langchain, to_langchain, to_openai

# MCP servers as tool sources (docs/mcp.md); the mcp SDK itself is imported only when one starts.
from .mcp import MCPServerSpec, MCPSource
from .registry import Tool, ToolOutput, ToolRegistry, as_tool, format_result, tool
from .schema import function_schema, parse_docstring

__all__ = ["tool", "Tool", "ToolOutput", "ToolRegistry", "as_tool", "format_result", "function_schema",
           "parse_docstring", "from_langchain", "to_langchain", "to_openai", "current_time",
           "calculator", "memory_search", "memory_search_tool", "MCPSource", "MCPServerSpec"]
