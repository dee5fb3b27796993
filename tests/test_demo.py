"""`omni-agent demo`, the project's main job, on the embedded default agent."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_speaks_calls_tools_answers_from_docs_and_keeps_pii_out(tmp_path):
    exe = Path(sys.executable).parent / "omni-agent"
    env = {"OMNI_AGENT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    p = subprocess.run([str(exe), "demo", "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out, err = p.stdout, p.stderr
    assert "Paris" in out
    assert "[tool call] current_time" in err and "[tool call] calculator" in err
    assert "391" in out
    assert "[Sources: zorblax-museum.md" in out and "9:40" in out
    # the safety step: personal data is shown redacted, and never spoken
    assert "555 0199" not in out and "4111" not in out and "[phone number]" in out
    wavs = sorted((tmp_path / "out").glob("turn-*.wav"))
    assert len(wavs) == 5 and all(w.stat().st_size > 10_000 for w in wavs)
    assert "serve agent" in out
