"""Agent configs: every key checked, bad keys named, middleware by short name or import path."""

import pytest

from omni_agent.config import build_agent, load_config
from omni_agent.errors import ConfigError
from omni_agent.testing import ScriptedThinker

SCRIPTED = """
[thinker]
backend = "scripted"
replies = ["Hello from the config."]
"""


def test_a_valid_config_builds_a_working_agent():
    agent = build_agent(load_config(SCRIPTED + '\n[agent]\nsystem_prompt = "Be kind."\n[generation]\nmax_tokens = 7\n'))
    assert isinstance(agent.thinker, ScriptedThinker)
    r = agent.ask("hi")
    assert r.text == "Hello from the config."
    req = agent.thinker.requests[0]
    assert req.settings.max_tokens == 7 and req.messages[0].text == "Be kind."


@pytest.mark.parametrize("toml, key", [
    ('[agent]\nsistem_prompt = "x"\n', "agent.sistem_prompt"),
    ('[generation]\nmax_tokens = "lots"\n', "generation.max_tokens"),
    ('colour = "blue"\n', "colour"),
    ('[thinker]\nbackend = "scripted"\nreplys = []\n', "thinker.replys"),
])
def test_invalid_keys_are_named_in_the_error(toml, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_agent(load_config(toml))


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown thinker backend 'gpt9'.*transformers"):
        build_agent(load_config('[thinker]\nbackend = "gpt9"\n'))


def test_malformed_toml_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config("[thinker\nbackend=")


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_custom_middleware_by_import_path_with_options(tmp_path, monkeypatch):
    (tmp_path / "my_mw.py").write_text(
        "from omni_agent.bus import Middleware\n"
        "class Shout(Middleware):\n"
        "    def __init__(self, suffix='!', **kw):\n"
        "        super().__init__(**kw)\n"
        "        self.suffix = suffix\n"
        "    def on_utterance(self, utt, ctx):\n"
        "        utt.text = utt.text.upper() + self.suffix\n"
        "        return utt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    agent = build_agent(load_config(SCRIPTED + '\n[[middleware]]\nuse = "my_mw:Shout"\nsuffix = "?!"\n'))
    r = agent.ask("x")
    assert r.utterances[0].text == "HELLO FROM THE CONFIG.?!"
    with pytest.raises(ConfigError, match=r"middleware\[0\].*colour"):
        build_agent(load_config(SCRIPTED + '\n[[middleware]]\nuse = "my_mw:Shout"\ncolour = 1\n'))


def test_unimportable_middleware_path_is_explained():
    with pytest.raises(ConfigError, match="cannot import middleware"):
        build_agent(load_config(SCRIPTED + '\n[[middleware]]\nuse = "no_such_pkg.mod:X"\n'))


def test_left_out_keys_take_the_agents_and_generation_settings_own_defaults():
    from omni_agent.agent import Agent
    from omni_agent.thinker import GenerationSettings

    built = build_agent(load_config(SCRIPTED))
    plain = Agent(thinker=ScriptedThinker("x"))
    assert (built.fallback, built.keep_originals, built.max_rounds, built.system_prompt) == \
        (plain.fallback, plain.keep_originals, plain.max_rounds, plain.system_prompt)
    assert built.settings == GenerationSettings()
