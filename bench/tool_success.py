"""How often the embedded default (SmolLM2-135M + tool router + constrained calls) uses
the built-in tools right: the scenario set of omni_agent.tools.evaluation.

    .venv/bin/python bench/tool_success.py            # prints each scenario and the rates
    .venv/bin/python bench/tool_success.py --no-router  # the model alone, for comparison
"""

from __future__ import annotations

import argparse
import time

from omni_agent.agent import Agent
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.thinker import GenerationSettings
from omni_agent.thinkers.transformers import TransformersThinker
from omni_agent.tools import calculator, current_time
from omni_agent.tools.evaluation import evaluate

SYSTEM = "You are a helpful assistant. Answer in one or two short sentences."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-router", action="store_true",
                    help="no router and no constrained decoding: the model on its own")
    args = ap.parse_args()
    thinker = TransformersThinker.default()
    t0 = time.monotonic()
    thinker.load()
    mw = ToolCalling(router=not args.no_router, filler=None)
    agent = Agent(thinker=thinker, tools=[current_time, calculator], middleware=[mw],
                  system_prompt=SYSTEM, settings=GenerationSettings(max_tokens=96))
    agent._run_sync(agent.warm_up())
    print(f"loaded in {time.monotonic() - t0:.1f} s; mode: "
          f"{'model alone' if args.no_router else 'router + constrained decoding'}", flush=True)
    report = evaluate(agent, progress=lambda o: print(("ok  " if o.ok else "BAD ") + o.scenario.request,
                                                      flush=True))
    print()
    print(report.summary())
    agent.close()


if __name__ == "__main__":
    main()
