"""How often the embedded default (SmolLM2-135M + tool router + constrained calls) uses
the built-in tools right: the scenario set of omni_agent.tools.evaluation, then the
router's precision and recall (tool needed / no tool needed) on its larger case set.

    .venv/bin/python bench/tool_success.py            # the embedded default, as `omni-agent chat` runs it
    .venv/bin/python bench/tool_success.py --engine transformers --no-return-direct   # the old default
    .venv/bin/python bench/tool_success.py --no-router  # the model alone, for comparison

The embedded default runs on llama.cpp when llama-cpp-python is installed, and says the
time and calculator results as the answer (``return_direct``): one Thinker round each.
"""

from __future__ import annotations

import argparse
import time

from omni_agent.agent import Agent
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.thinker import GenerationSettings
from omni_agent.thinkers.embedded import ENGINES, embedded_thinker
from omni_agent.tools import calculator, current_time
from omni_agent.tools.evaluation import ROUTING_CASES, evaluate, evaluate_routing
from omni_agent.tools.router import ToolRouter

SYSTEM = "You are a helpful assistant. Answer in one or two short sentences."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-router", action="store_true",
                    help="no router and no constrained decoding: the model on its own")
    ap.add_argument("--engine", choices=ENGINES, default="auto",
                    help="the embedded model's engine (auto: llama.cpp when installed)")
    ap.add_argument("--no-return-direct", action="store_true",
                    help="a second Thinker round reads the time tool's result (the old default)")
    args = ap.parse_args()
    thinker = embedded_thinker(engine=args.engine)
    t0 = time.monotonic()
    thinker.load()
    mw = ToolCalling(router=not args.no_router, filler=None,
                     return_direct=() if args.no_return_direct else ["current_time", "calculator"])
    agent = Agent(thinker=thinker, tools=[current_time, calculator], middleware=[mw],
                  system_prompt=SYSTEM, settings=GenerationSettings(max_tokens=96))
    agent._run_sync(agent.warm_up())
    print(f"{thinker.name}: loaded in {time.monotonic() - t0:.1f} s; mode: "
          f"{'model alone' if args.no_router else 'router + constrained decoding'}"
          f"{'' if args.no_return_direct else ', tool results said as the tools gave them'}", flush=True)
    report = evaluate(agent, progress=lambda o: print(("ok  " if o.ok else "BAD ") + o.scenario.request,
                                                      flush=True))
    print()
    print(report.summary())
    print()
    # The router alone, also with --no-router: what it would have picked.
    print(f"router on {len(ROUTING_CASES)} requests (omni_agent.tools.evaluation.ROUTING_CASES):")
    print(evaluate_routing(mw.router or ToolRouter()).table())
    agent.close()


if __name__ == "__main__":
    main()
