"""Custom safety middleware: one written as a class, one as a plain function, a
moderation check, plugged into an agent from code next to the built-in safety chain.

    .venv/bin/python examples/custom_safety.py            # a scripted Thinker: instant, offline
    .venv/bin/python examples/custom_safety.py --live     # the embedded model (SmolLM2) answers

The same middleware from a config file: examples/safety.toml (by import path; run with
``PYTHONPATH=examples`` so ``custom_safety`` can be imported):

    PYTHONPATH=examples omni-agent filter --config examples/safety.toml <<< "Try AcmeCorp!"

Every clause is held until each middleware has approved it; a middleware that raises or
overruns its ``timeout`` blocks the clause (the fallback line is spoken instead) and the
trace says why.
"""

from __future__ import annotations

import argparse
import re

from omni_agent.agent import Agent
from omni_agent.bus import Middleware, hook
from omni_agent.errors import Blocked
from omni_agent.middleware.markup import MarkupGuard
from omni_agent.middleware.pii import PIIRedactor
from omni_agent.middleware.policy import Moderation, allow, block, rewrite
from omni_agent.middleware.speech import SpeechShaper
from omni_agent.testing import RecordingTalker, ScriptedThinker


class NoCompetitors(Middleware):
    """A class: speaks our product's name instead of a competitor's, on screen too."""

    timeout = 0.05  # seconds per clause; overrunning blocks the clause (fail-closed)

    def __init__(self, competitors: list[str] | None = None, ours: str = "our product", **kw):
        super().__init__(**kw)
        names = competitors or ["AcmeCorp", "Globex"]
        self.pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b", re.IGNORECASE)
        self.ours = ours

    def on_utterance(self, utt, ctx):
        utt.text = self.pattern.sub(self.ours, utt.text)
        if utt.display is not None:
            utt.display = self.pattern.sub(self.ours, utt.display)
        return utt


@hook("utterance", timeout=0.05, fallback="Please ask a pharmacist about doses.")
def no_dosages(utt, ctx):
    """A function: blocks clauses that give a medicine dose; its own fallback is spoken."""
    if re.search(r"\b\d+\s?(mg|ml|tablets?)\b", utt.text, re.IGNORECASE):
        raise Blocked("gives a medicine dose")
    return utt


def polite(text: str):
    """A moderation check: any callable (a classifier, an LLM judge) returning a verdict."""
    if re.search(r"\b(stupid|idiot)\b", text, re.IGNORECASE):
        return block("insult")
    if "guarantee" in text.lower():
        return rewrite("We aim for the best result, but can't promise it.")
    return allow()


def safety_chain() -> list:
    """The built-ins and the custom ones, in the order they should run."""
    return [
        MarkupGuard(),                                 # tool-call markup and <think> off speech
        PIIRedactor(actions={"card": "block"}),        # phones, e-mails, IBANs... redacted; cards block
        NoCompetitors(),                               # the class above
        no_dosages,                                    # the function above
        Moderation(polite, timeout=0.2),               # the moderation hook
        SpeechShaper(),                                # markdown, URLs, numbers -> speakable words
    ]


SCRIPT = [
    "<think>They want a recommendation.</think>",
    "Honestly, AcmeCorp is fine. ",
    "Call our desk at +1 555 010 0199 or mail help@example.com. ",
    "Take 400 mg twice a day. ",
    "We guarantee results! ",
    "It's **$19.99** a month, see https://example.com/pricing.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--live", action="store_true", help="answer with the embedded model instead of a script")
    args = ap.parse_args()
    if args.live:
        from omni_agent.thinkers.transformers import TransformersThinker

        thinker = TransformersThinker.default()
    else:
        thinker = ScriptedThinker([SCRIPT])
    talker = RecordingTalker()  # records what would be spoken; use PiperTalker() to hear it
    agent = Agent(thinker=thinker, talker=talker, middleware=safety_chain(),
                  fallback="Sorry, I can't say that.")
    result = agent.ask("Which product should I buy, and how do I reach you?")
    print("shown:  ", result.text)
    print("spoken:")
    for line in talker.spoken:
        print("   ", line)
    print("trace:")
    print("   ", result.trace.summary().replace("\n", "\n    "))


if __name__ == "__main__":
    main()
