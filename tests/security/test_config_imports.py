"""Configs are code: what an import path in a config may name, and the import allow-list.

Red-team findings these guard: ``use = "os:system"`` ran a shell command,
``subprocess:Popen`` spawned a process, ``subprocess:getoutput`` was accepted as a tool.
Every refusal must be a clear ConfigError raised before anything named is imported or
called: the marker files below must never appear.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_agent.cli import main
from omni_agent.config import build_agent, load_config
from omni_agent.errors import ConfigError
from omni_agent.registry import MIDDLEWARE, TALKERS, THINKERS, TOOLS, resolve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ENV = "OMNI_AGENT_ALLOW_IMPORTS"

SCRIPTED = '[thinker]\nbackend = "scripted"\nreplies = ["Hello from the config."]\n'

# The user's own code, as a test writes it into a folder on sys.path.
USER_MW = '''
from omni_agent.bus import Middleware, hook
from omni_agent.tools import tool

class Shout(Middleware):
    def __init__(self, suffix="!", **kw):
        super().__init__(**kw)
        self.suffix = suffix
    def on_utterance(self, utt, ctx):
        utt.text = utt.text.upper() + self.suffix
        return utt

@hook("utterance")
def whisper(utt, ctx):
    utt.text = utt.text.lower()
    return utt

def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}."

@tool
def tide(port: str) -> str:
    """The tide in a port."""
    return f"High tide in {port}."

class NotAMiddleware:
    def __init__(self, **kw):
        pass

def polite(text):
    return True
'''

USER_THINKER = '''
from omni_agent.testing import ScriptedThinker

class EchoThinker(ScriptedThinker):
    def __init__(self, **kw):
        super().__init__(["Echo from my thinker."])

def make_thinker(**kw):
    return EchoThinker()
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """Write modules into a folder on sys.path; forget them again after the test."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written: list[str] = []

    def write(name: str, source: str) -> Path:
        path = folder / (name.replace(".", "/") + ".py")
        if "." in name:
            for parent in path.relative_to(folder).parents:
                if str(parent) != ".":
                    init = folder / parent / "__init__.py"
                    if not init.exists():
                        init.parent.mkdir(parents=True, exist_ok=True)
                        init.write_text("")
        path.write_text(source)
        written.append(name.partition(".")[0])
        importlib.invalidate_caches()
        return path

    yield write
    for mod in list(sys.modules):
        if mod.partition(".")[0] in written:
            del sys.modules[mod]


def config_with(where: str, body: str) -> str:
    """A scripted agent's config with ``body`` placed as a tool, thinker, talker or middleware."""
    if where == "tool":
        return f"tools = [{body}]\n" + SCRIPTED
    if where == "thinker":
        return "[thinker]\n" + body + "\n"
    if where == "talker":
        return SCRIPTED + "[talker]\n" + body + "\n"
    return SCRIPTED + "[[middleware]]\n" + body + "\n"


# --------------------------------------------------------------------- refused paths

# (id, where it goes, the config text; {m} is a marker file the call would create,
#  {d} a folder it would delete, {script} a script that would create the marker)
REFUSED = [
    ("os:system as middleware", "middleware", 'use = "os:system"\ncommand = "touch {m}"'),
    ("posix:system (built-in module)", "middleware", 'use = "posix:system"\ncommand = "touch {m}"'),
    ("subprocess:Popen as middleware", "middleware", 'use = "subprocess:Popen"\nargs = ["touch", "{m}"]'),
    ("subprocess:run as middleware", "middleware", 'use = "subprocess:run"\nargs = ["touch", "{m}"]'),
    ("subprocess:getoutput as tool", "tool", '"subprocess:getoutput"'),
    ("subprocess:Popen as thinker", "thinker", 'backend = "subprocess:Popen"\nargs = ["touch", "{m}"]'),
    ("os:system as talker", "talker", 'backend = "os:system"\ncommand = "touch {m}"'),
    ("builtins:eval", "middleware", 'use = "builtins:eval"'),
    ("builtins:exec as tool", "tool", '"builtins:exec"'),
    ("shutil:rmtree", "middleware", 'use = "shutil:rmtree"\npath = "{d}"'),
    ("importlib:import_module as tool", "tool", '"importlib:import_module"'),
    ("runpy:run_path", "middleware", 'use = "runpy:run_path"\npath_name = "{script}"'),
    ("pty:spawn", "middleware", 'use = "pty:spawn"\nargv = ["touch", "{m}"]'),
    ("pickle:loads as tool", "tool", '"pickle:loads"'),
    ("ctypes:CDLL", "middleware", 'use = "ctypes:CDLL"\nname = "libc.so.6"'),
    ("os:system as moderation check", "middleware", 'use = "moderation"\ncheck = "os:system"'),
    ("a stdlib module re-exported by omni_agent", "tool", '"omni_agent.config:inspect"'),
    ("a dunder path out of a class", "middleware", 'use = "omni_agent.bus:Middleware.__subclasses__"'),
    ("the running script", "middleware", 'use = "__main__:main"'),
]


@pytest.mark.parametrize("where, body", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_dangerous_import_paths_are_refused_with_no_side_effect(tmp_path, where, body):
    marker, victim, script = tmp_path / "marker", tmp_path / "victim", tmp_path / "script.py"
    victim.mkdir()
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    toml = config_with(where, body.format(m=marker, d=victim, script=script))
    with pytest.raises(ConfigError) as err:
        agent = build_agent(load_config(toml))
        agent.ask("touch " + str(marker))  # only reached if the build wrongly succeeded
    message = str(err.value)
    assert "docs/security.md" in message or "not a " in message  # says what to do
    assert not marker.exists() and victim.is_dir()


def test_a_stdlib_path_names_the_standard_library_and_what_to_do_instead():
    with pytest.raises(ConfigError) as err:
        build_agent(load_config(config_with("middleware", 'use = "os:system"')))
    message = str(err.value)
    assert "'os:system'" in message and "standard library" in message
    assert "your own" in message and "docs/security.md" in message


def test_the_standard_library_is_refused_before_it_is_imported():
    # Importing antigravity opens a web browser; it must not even be imported.
    assert "antigravity" not in sys.modules
    with pytest.raises(ConfigError, match="standard library"):
        resolve("antigravity:geohash", MIDDLEWARE)
    assert "antigravity" not in sys.modules


@pytest.mark.skipif(importlib.util.find_spec("test") is None, reason="Python's test package is not installed")
def test_modules_shipped_with_python_outside_the_stdlib_list_are_refused():
    # Python's own test package is not in sys.stdlib_module_names but lives in its folder.
    with pytest.raises(ConfigError, match="standard library"):
        resolve("test.support.os_helper:rmtree", TOOLS)


def test_a_third_party_re_export_of_the_stdlib_is_refused(tmp_path):
    pytest.importorskip("pycparser")  # pycparser does `from subprocess import check_output`
    marker = tmp_path / "marker"
    toml = config_with("middleware", f'use = "pycparser:check_output"\nargs = ["touch", "{marker}"]')
    with pytest.raises(ConfigError, match=r"'pycparser:check_output'.*subprocess.*standard library"):
        build_agent(load_config(toml))
    assert not marker.exists()


def test_a_re_export_of_the_stdlib_from_your_own_module_is_refused(user_code, tmp_path):
    user_code("sec_vendor", "from subprocess import getoutput as run\nimport os\n")
    with pytest.raises(ConfigError, match=r"'sec_vendor:run'.*subprocess.*standard library"):
        build_agent(load_config(config_with("tool", '"sec_vendor:run"')))
    with pytest.raises(ConfigError, match=r"'sec_vendor:os'.*module"):
        build_agent(load_config(config_with("tool", '"sec_vendor:os"')))


def test_a_re_export_from_another_package_is_refused_and_names_where_it_is_defined(user_code):
    user_code("sec_lib_b.tools", "def weather(city: str) -> str:\n    '''Weather.'''\n    return city\n")
    user_code("sec_app_a", "from sec_lib_b.tools import weather\n")
    with pytest.raises(ConfigError, match=r"defined in 'sec_lib_b\.tools'.*'sec_lib_b\.tools:weather'"):
        build_agent(load_config(config_with("tool", '"sec_app_a:weather"')))


@pytest.mark.parametrize("path", [":x", "mod:", ".relative:X", "a..b:X", "my-pkg:X", "mod:a..b", "mod:__dict__"])
def test_malformed_import_paths_are_explained(path):
    with pytest.raises(ConfigError, match="import path"):
        resolve(path, MIDDLEWARE)


# ------------------------------------------------------------- the kind is checked

def test_a_class_that_is_not_a_middleware_is_refused(user_code):
    user_code("sec_user_mw", USER_MW)
    with pytest.raises(ConfigError, match=r"'sec_user_mw:NotAMiddleware'.*Middleware subclass"):
        build_agent(load_config(config_with("middleware", 'use = "sec_user_mw:NotAMiddleware"')))


def test_a_function_is_not_a_thinker_backend(user_code):
    user_code("sec_user_thinker", USER_THINKER)
    with pytest.raises(ConfigError, match=r"'sec_user_thinker:make_thinker'.*Thinker class"):
        build_agent(load_config(config_with("thinker", 'backend = "sec_user_thinker:make_thinker"')))


def test_a_class_is_not_a_tool(user_code):
    user_code("sec_user_mw", USER_MW)
    with pytest.raises(ConfigError, match=r"'sec_user_mw:Shout'.*is not a tool"):
        build_agent(load_config(config_with("tool", '"sec_user_mw:Shout"')))


def test_a_middleware_class_is_not_a_thinker_backend():
    with pytest.raises(ConfigError, match=r"'omni_agent.bus:Middleware'.*Thinker class"):
        build_agent(load_config(config_with("thinker", 'backend = "omni_agent.bus:Middleware"')))


def test_every_built_in_short_name_passes_the_rule():
    for table in (THINKERS, TALKERS, MIDDLEWARE, TOOLS):
        for name in table:
            assert resolve(name, table) is not None


# ------------------------------------------------------------------ your own code works

def test_your_own_modules_still_work_without_an_allow_list(user_code):
    user_code("sec_user_mw", USER_MW)
    user_code("sec_user_thinker", USER_THINKER)
    toml = ('tools = ["current_time", "sec_user_mw:weather", "sec_user_mw:tide"]\n'
            '[thinker]\nbackend = "sec_user_thinker:EchoThinker"\n'
            '[[middleware]]\nuse = "sec_user_mw:Shout"\nsuffix = "?!"\n'
            '[[middleware]]\nuse = "moderation"\ncheck = "sec_user_mw:polite"\n')
    agent = build_agent(load_config(toml))
    assert agent.ask("x").utterances[0].text == "ECHO FROM MY THINKER.?!"


def test_a_package_may_export_its_own_code(user_code):
    user_code("sec_mypkg.safety", USER_MW)
    user_code("sec_mypkg.__init__", "from .safety import Shout, whisper\n")
    agent = build_agent(load_config(config_with("middleware", 'use = "sec_mypkg:whisper"')))
    assert agent.ask("x").utterances[0].text == "hello from the config."


# ---------------------------------------------------------------- the allow-list

IMPORT_MARKER = "open({marker!r}, 'w').close()\nfrom omni_agent.bus import hook\n" \
                "@hook('utterance')\ndef hi(utt, ctx):\n    return utt\n"


def test_an_allow_list_admits_listed_packages_only_and_checks_before_import(user_code, tmp_path):
    user_code("sec_user_mw", USER_MW)
    marker = tmp_path / "imported"
    user_code("sec_unlisted", IMPORT_MARKER.format(marker=str(marker)))
    agent = build_agent(load_config(config_with("middleware", 'use = "sec_user_mw:Shout"')),
                        allow_imports=["sec_user_mw"])
    assert agent.ask("x").utterances[0].text == "HELLO FROM THE CONFIG.!"
    with pytest.raises(ConfigError) as err:
        build_agent(load_config(config_with("middleware", 'use = "sec_unlisted:hi"')),
                    allow_imports=["sec_user_mw"])
    assert "'sec_unlisted'" in str(err.value) and "--allow-import sec_unlisted" in str(err.value)
    assert not marker.exists()  # the module was never imported


def test_the_allow_list_matches_whole_package_names(user_code):
    user_code("sec_mypkg.safety", USER_MW)
    user_code("sec_mypkgevil", USER_MW)
    ok = build_agent(load_config(config_with("middleware", 'use = "sec_mypkg.safety:Shout"')),
                     allow_imports=["sec_mypkg"])
    assert ok.middleware
    with pytest.raises(ConfigError, match="allow-list"):
        build_agent(load_config(config_with("middleware", 'use = "sec_mypkgevil:Shout"')),
                    allow_imports=["sec_mypkg"])


def test_an_allow_list_for_a_subpackage_refuses_the_rest_of_the_package(user_code):
    user_code("sec_mypkg.safety", USER_MW)
    user_code("sec_mypkg.other", USER_MW)
    with pytest.raises(ConfigError, match="allow-list"):
        build_agent(load_config(config_with("middleware", 'use = "sec_mypkg.other:Shout"')),
                    allow_imports=["sec_mypkg.safety"])


def test_built_in_short_names_need_no_allow_list():
    toml = 'tools = ["current_time", "calculator"]\n' + SCRIPTED + '[[middleware]]\nuse = "pii"\n' \
           '[[middleware]]\nuse = "speech"\n[talker]\nbackend = "recording"\n'
    agent = build_agent(load_config(toml), allow_imports=["nothing_of_yours"])
    assert agent.ask("x").text == "Hello from the config."


def test_the_config_security_section_restricts_imports(user_code):
    user_code("sec_user_mw", USER_MW)
    toml = '[security]\nallow_imports = ["sec_other"]\n' + config_with("middleware", 'use = "sec_user_mw:Shout"')
    with pytest.raises(ConfigError, match=r"\[security\] allow_imports"):
        build_agent(load_config(toml))
    toml = '[security]\nallow_imports = []\n' + config_with("middleware", 'use = "sec_user_mw:Shout"')
    with pytest.raises(ConfigError, match="allow-list"):
        build_agent(load_config(toml))


def test_a_config_cannot_widen_the_operators_allow_list(user_code):
    user_code("sec_user_mw", USER_MW)
    toml = '[security]\nallow_imports = ["sec_user_mw"]\n' + config_with("middleware", 'use = "sec_user_mw:Shout"')
    assert build_agent(load_config(toml)).middleware
    with pytest.raises(ConfigError, match="--allow-import sec_user_mw"):
        build_agent(load_config(toml), allow_imports=["sec_other"])


def test_the_environment_variable_restricts_imports(user_code, monkeypatch):
    user_code("sec_user_mw", USER_MW)
    cfg = load_config(config_with("middleware", 'use = "sec_user_mw:Shout"'))
    monkeypatch.setenv(ENV, "sec_other, sec_more")
    with pytest.raises(ConfigError, match=ENV):
        build_agent(cfg)
    monkeypatch.setenv(ENV, "sec_other,sec_user_mw")
    assert build_agent(cfg).middleware


@pytest.mark.parametrize("entry", ["os", "subprocess.foo", "builtins"])
def test_an_allow_list_cannot_admit_the_standard_library(entry):
    with pytest.raises(ConfigError, match="standard library"):
        build_agent(load_config(SCRIPTED), allow_imports=[entry])
    with pytest.raises(ConfigError, match="standard library"):
        load_config(f'[security]\nallow_imports = ["{entry}"]\n' + SCRIPTED)


@pytest.mark.parametrize("entry", ["my-pkg", "../x", "a..b", "pkg:Name"])
def test_a_malformed_allow_list_entry_is_refused(entry):
    with pytest.raises(ConfigError, match="package name"):
        build_agent(load_config(SCRIPTED), allow_imports=[entry])


# ------------------------------------------------------------------------ the CLI

def test_cli_allow_import_admits_the_examples_custom_safety(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    r = CliRunner().invoke(main, ["filter", "--config", str(EXAMPLES / "safety.toml"),
                                  "--allow-import", "custom_safety"], input="Call 555-0199. AcmeCorp rocks!")
    assert r.exit_code == 0, r.output
    assert "our product rocks!" in r.output


def test_cli_allow_import_refuses_an_unlisted_package(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    r = CliRunner().invoke(main, ["filter", "--config", str(EXAMPLES / "safety.toml"),
                                  "--allow-import", "mypkg"], input="hi")
    assert r.exit_code == 1
    assert "custom_safety" in r.output and "--allow-import custom_safety" in r.output


def test_cli_filter_refuses_os_system_as_a_moderation_check(tmp_path):
    marker = tmp_path / "marker"
    cfg = tmp_path / "evil.toml"
    cfg.write_text('[[middleware]]\nuse = "moderation"\ncheck = "os:system"\n')
    r = CliRunner().invoke(main, ["filter", "--config", str(cfg)], input=f"touch {marker}")
    assert r.exit_code == 1 and "standard library" in r.output
    assert not marker.exists()


@pytest.mark.parametrize("command", [
    ["chat", "-p", "hi"],
    ["ask", "-p", "hi", "--talker", "recording"],
    ["demo", "--no-speech"],
    ["filter"],
])
def test_every_command_that_takes_a_config_takes_allow_import(user_code, tmp_path, command):
    user_code("sec_user_mw", USER_MW)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config_with("middleware", 'use = "sec_user_mw:Shout"'))
    args = [*command, "--config", str(cfg)]
    refused = CliRunner().invoke(main, [*args, "--allow-import", "sec_other"], input="hi")
    assert refused.exit_code == 1 and "--allow-import sec_user_mw" in refused.output
    if command[0] in ("chat", "filter"):
        r = CliRunner().invoke(main, [*args, "--allow-import", "sec_other", "--allow-import", "sec_user_mw"],
                               input="hello there.")
        assert r.exit_code == 0, r.output
        assert "HELLO" in r.output


def test_the_installed_command_reads_the_environment_variable(tmp_path):
    exe = Path(sys.executable).parent / "omni-agent"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES), ENV: "mypkg"}
    p = subprocess.run([str(exe), "filter", "--config", str(EXAMPLES / "safety.toml")],
                       input="hi", capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1
    assert "custom_safety" in p.stderr and ENV in p.stderr
