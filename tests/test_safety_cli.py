"""``omni-agent filter`` and the safety examples: what a user runs to check a config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_agent.cli import main
from omni_agent.cli.filter import chunk_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def lines(output):
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_filter_prints_utterances_and_interventions_as_json_lines():
    r = CliRunner().invoke(main, ["filter", "--chunk", "3"], input="Call me at 555-0199. See **this**.")
    assert r.exit_code == 0, r.output
    out = lines(r.output)
    utts = [o["text"] for o in out if o["type"] == "utterance"]
    assert utts == ["Call me at [phone number].", "See this."]
    ivs = [o for o in out if o["type"] == "intervention"]
    assert {"pii", "speech"} <= {o["middleware"] for o in ivs}
    assert all({"middleware", "point", "action", "before", "after", "reason"} <= set(o) for o in ivs)


@pytest.mark.parametrize("args", [["--chunk", "1"], ["--random-chunks", "7"], ["--random-chunks", "8"], []])
def test_filter_gives_the_same_utterances_whatever_the_chunking(args):
    text = "My IBAN is DE89 3704 0044 0532 0130 00, ok? <think>hidden</think>Bye jane@example.com."
    r = CliRunner().invoke(main, ["filter", *args], input=text)
    utts = [o["text"] for o in lines(r.output) if o["type"] == "utterance"]
    assert utts == ["My IBAN is [bank account number],", "ok?", "Bye [email address]."]


def test_chunk_text_cuts_as_asked():
    assert chunk_text("abcdef", chunk=4) == ["abcd", "ef"]
    assert "".join(chunk_text("hello world", seed=3)) == "hello world"
    assert chunk_text("hi there", ) == ["hi", " there"]


def test_filter_with_a_config_uses_its_middleware_and_fallback(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    text = "Call 555-0199. AcmeCorp rocks! Take 400 mg now. My card is 4111 1111 1111 1111."
    r = CliRunner().invoke(main, ["filter", "--config", str(EXAMPLES / "safety.toml"), "--random-chunks", "1"],
                           input=text)
    assert r.exit_code == 0, r.output
    utts = [(o["text"], o["fallback"]) for o in lines(r.output) if o["type"] == "utterance"]
    assert utts == [("Call [phone number].", False), ("our product rocks!", False),
                    ("Please ask a pharmacist about doses.", True), ("Sorry, I can't say that.", True)]
    ivs = [o for o in lines(r.output) if o["type"] == "intervention"]
    assert all(o["before"] is None for o in ivs)  # keep_originals = false in the config


def test_filter_with_a_bad_config_fails_with_a_clear_message(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[middleware]]\nuse = "pii"\nactoins = {card = "block"}\n')
    r = CliRunner().invoke(main, ["filter", "--config", str(cfg)], input="hi")
    assert r.exit_code == 1 and "actoins" in r.output


def test_filter_refuses_empty_input_and_both_chunk_options():
    assert CliRunner().invoke(main, ["filter"], input="  ").exit_code == 2
    r = CliRunner().invoke(main, ["filter", "--chunk", "2", "--random-chunks", "1"], input="x")
    assert r.exit_code == 2 and "either" in r.output


def test_filter_runs_as_the_installed_command():
    exe = Path(sys.executable).parent / "omni-agent"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    p = subprocess.run([str(exe), "filter", "--config", str(EXAMPLES / "safety.toml"), "--random-chunks", "2"],
                       input="Reach me on +44 20 7946 0958.", capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert lines(p.stdout)[0]["text"] == "Reach me on [phone number]."


def test_the_custom_safety_example_runs_and_keeps_unsafe_clauses_off_speech():
    p = subprocess.run([sys.executable, str(EXAMPLES / "custom_safety.py")], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    spoken = p.stdout.split("spoken:")[1].split("trace:")[0]
    assert "AcmeCorp" not in spoken and "0199" not in spoken and "400 mg" not in spoken
    assert "Please ask a pharmacist about doses." in spoken
