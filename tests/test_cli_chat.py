"""The chat command: one turn with -p, JSON lines, clear errors with a non-zero exit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_agent.cli import main

CFG = '[thinker]\nbackend = "scripted"\nreplies = [["Paris ", "is the capital."]]\n'


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text(CFG)
    return str(p)


def test_chat_prompt_prints_the_answer(cfg):
    r = CliRunner().invoke(main, ["chat", "-p", "capital?", "--config", cfg, "--no-trace"])
    assert r.exit_code == 0, r.output
    assert "Paris is the capital." in r.output


def test_chat_json_prints_events_and_the_trace(cfg):
    r = CliRunner().invoke(main, ["chat", "-p", "capital?", "--config", cfg, "--json"])
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    types = [line["type"] for line in lines]
    assert types[0] == "user_turn" and "text_delta" in types and types[-2:] == ["turn_end", "trace"]
    assert lines[-1]["segments"][0]["display"] == "Paris is the capital."


def test_repl_keeps_history_across_turns(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text('[thinker]\nbackend = "scripted"\nreplies = ["One.", "Two."]\n')
    r = CliRunner().invoke(main, ["chat", "--config", str(p), "--no-trace"], input="hi\nagain\n")
    assert r.exit_code == 0, r.output
    assert "One." in r.output and "Two." in r.output


def test_bad_config_exits_non_zero_naming_the_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[thinker]\nbackend = "scripted"\n[agent]\nfalback = "x"\n')
    r = CliRunner().invoke(main, ["chat", "-p", "x", "--config", str(p)])
    assert r.exit_code == 1 and "agent.falback" in r.output


def test_image_for_a_text_only_thinker_is_refused(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('[thinker]\nbackend = "scripted"\naccepts = ["text"]\n')
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG\r\n")
    r = CliRunner().invoke(main, ["chat", "-p", "what?", "--image", str(img), "--config", str(p)])
    assert r.exit_code == 1 and "cannot take image" in r.output


def test_missing_attachment_is_a_clear_error(cfg):
    r = CliRunner().invoke(main, ["chat", "-p", "x", "--image", "/nope.png", "--config", cfg])
    assert r.exit_code == 1 and "not found" in r.output


def test_the_installed_command_runs(cfg):
    exe = Path(sys.executable).parent / "omni-agent"
    out = subprocess.run([str(exe), "chat", "-p", "hi", "--config", cfg, "--no-trace"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Paris is the capital." in out.stdout
