"""Ingesting a folder takes only what is inside it: a link in the folder that leads out of
it (to /etc/passwd, to someone's home directory) is not followed, and the report says so.
Links that stay inside the folder are fine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_agent.cli.ingest import ingest as ingest_command
from omni_agent.memory.ingest import ingest
from omni_agent.memory.vector import VectorMemory

SECRET = "The vault code is 4417 and the spare key is under the blue pot."
PLAN = "# Plan\n\nThe merger with Quellcorp closes on the ninth of March.\n"


@pytest.fixture
def tree(tmp_path):
    """docs/ with its own files, links that stay inside, and links that lead outside."""
    outside = tmp_path / "outside"
    (outside / "private").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / "private" / "plan.md").write_text(PLAN)
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "museum.md").write_text("# Zorblax Museum\n\nThe Zorblax Museum opens at 9:40 am.\n")
    (docs / "sub" / "tea.txt").write_text("Krindle tea steeps for four minutes.\n")
    try:
        (docs / "passwd.txt").symlink_to(outside / "secret.txt")  # a file outside
        (docs / "linked").symlink_to(outside / "private", target_is_directory=True)  # a dir outside
        (docs / "sub" / "up.md").symlink_to("../../outside/private/plan.md")  # relative, outside
        (docs / "alias.md").symlink_to(docs / "museum.md")  # inside: fine
        (docs / "tea-link").symlink_to(docs / "sub", target_is_directory=True)  # inside: fine
    except OSError as e:  # pragma: no cover - a file system without symlinks
        pytest.skip(f"cannot make symlinks here: {e}")
    return docs


@pytest.fixture
def memory(tmp_path):
    return VectorMemory("docs", data_dir=tmp_path / "chroma")


def stored_text(memory) -> str:
    return "\n".join(p.text for p in memory.get())


def test_nothing_a_link_leads_to_outside_the_folder_is_ingested(tree, memory):
    ingest([tree], memory, progress=False)
    root = tree.resolve()
    assert {Path(p.source).parent.is_relative_to(root) for p in memory.get()} == {True}
    text = stored_text(memory)
    assert "vault code" not in text and "Quellcorp" not in text


def test_the_report_names_each_link_left_out_and_why(tree, memory):
    report = ingest([tree], memory, progress=False)
    skipped = dict(report.skipped)
    assert set(skipped) == {str(tree / "passwd.txt"), str(tree / "linked"), str(tree / "sub" / "up.md")}
    assert all("outside" in why and str(tree.resolve()) in why for why in skipped.values())
    assert str((tree.parent / "outside" / "secret.txt").resolve()) in skipped[str(tree / "passwd.txt")]
    assert "3 path(s) skipped" in report.summary()
    assert report.errors == []  # left out on purpose: not a failure


def test_links_that_stay_inside_the_folder_are_fine(tree, memory):
    report = ingest([tree], memory, progress=False)
    names = sorted({p.metadata["name"] for p in memory.get()})
    assert names == ["museum.md", "tea.txt"]  # each once, though reachable through a link too
    assert report.files == 2


def test_a_folder_given_through_a_link_is_walked_inside_its_target(tree, memory, tmp_path):
    door = tmp_path / "door"
    door.symlink_to(tree, target_is_directory=True)
    report = ingest([door], memory, progress=False)
    assert report.files == 2 and len(report.skipped) == 3
    assert "vault code" not in stored_text(memory)


def test_a_file_named_explicitly_is_taken_even_through_a_link(tree, memory):
    report = ingest([tree / "passwd.txt"], memory, progress=False)
    assert report.files == 1 and report.skipped == []
    assert "vault code" in stored_text(memory)


def test_cli_ingest_lists_the_skipped_links_and_still_succeeds(tree, tmp_path):
    result = CliRunner().invoke(ingest_command, [str(tree), "--data-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("skipped ")]
    assert len(lines) == 3
    assert any(str(tree / "passwd.txt") in ln and "outside" in ln for ln in lines)
    assert "3 path(s) skipped" in result.stdout
    assert "vault code" not in stored_text(VectorMemory("default", data_dir=tmp_path / "c", create=False))
