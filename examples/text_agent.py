"""A Thinker-only text agent with a middleware of your own, on the embedded default model.

    .venv/bin/python examples/text_agent.py "What is the capital of France?"

The same Agent with a Talker is a voice agent; the middleware and tools do not change.
"""

import sys

from omni_agent import Agent, Middleware
from omni_agent.thinkers.transformers import TransformersThinker


class Polite(Middleware):
    """Rewrites each clause before it is shown (the trace records the change)."""

    def on_utterance(self, utt, ctx):
        utt.text = utt.text.replace("!", ".")
        utt.display = utt.text
        return utt


def main() -> None:
    question = " ".join(sys.argv[1:]) or "What is the capital of France?"
    agent = Agent(
        thinker=TransformersThinker.default(),
        middleware=[Polite()],
        system_prompt="You are a helpful assistant. Answer in one short sentence.",
    )
    result = agent.ask(question)
    print(result.text)
    print(result.trace.summary())


if __name__ == "__main__":
    main()
