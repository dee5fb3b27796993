"""The default ``serve agent`` is safe as shipped: the markup guard and PII redaction are on,
so a phone number the Thinker writes is never spoken or shown, nor tool-call markup."""

from __future__ import annotations

from omni_agent.cli.serve_agent import server_default_config
from omni_agent.config import load_config
from omni_agent.testing import RecordingTalker


def default_server_agent(reply: str):
    cfg = server_default_config()
    cfg["thinker"] = {"backend": "scripted", "replies": [reply]}  # the real chain, a scripted model
    cfg["talker"] = {"backend": "recording"}
    cfg.pop("ears", None)
    # The retrieval and tool router need models of their own; the safety chain is what counts.
    cfg["middleware"] = [m for m in cfg["middleware"] if m.get("use") not in ("rag", "tools")]
    cfg["tools"] = []
    return load_config(cfg)


def test_the_default_server_config_has_the_markup_guard_and_pii_redaction():
    uses = [m["use"] for m in server_default_config()["middleware"]]
    assert "markup" in uses and "pii" in uses


def test_a_phone_number_from_the_default_server_agent_is_not_spoken_or_shown():
    from omni_agent.config import build_agent

    talker = RecordingTalker()
    agent = build_agent(default_server_agent("Call me at 555-0199 today. <think>the plan</think>Bye."),
                        talker=talker)
    r = agent.session().ask("how do I reach you")
    said = " ".join(talker.spoken)
    assert "555-0199" not in r.text and "555-0199" not in said
    assert "plan" not in r.text and "think" not in said and "Bye." in said
