"""What README promises about installing and configuring matches the repository's files."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def readme_block(after: str, language: str) -> list[str]:
    """The lines of the first ```language block after the heading `after`."""
    section = README[README.index(after) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block after {after!r}"
    return match[1].splitlines()


def test_going_distributed_shows_every_line_cluster_toml_changes() -> None:
    """README's diff is the real difference of the two shipped configs: each line it removes
    or adds is one the files differ by, and it leaves out none but the opening comment."""
    local = (REPO / "config/local.toml").read_text().splitlines()
    cluster = (REPO / "config/cluster.toml").read_text().splitlines()
    changed = [
        line
        for line in difflib.unified_diff(local, cluster, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("---", "+++", "-#", "+#"))
    ]
    shown = readme_block("## Going distributed", "diff")
    assert [line for line in shown if line[:1] in "+-"] == changed
    for line in shown:
        if line.startswith(" "):  # context: in both files
            assert line[1:] in local and line[1:] in cluster, line


def test_the_lock_pins_every_dependency_pyproject_names() -> None:
    """A dependency added to pyproject.toml without regenerating the lock would install
    unpinned: every one is pinned (==) in requirements.lock."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    lock = (REPO / "requirements.lock").read_text().lower().replace("_", "-")
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement)[0].lower().replace("_", "-")
        assert re.search(rf"^{re.escape(name)}==", lock, re.M), f"{name} is not locked"


def test_install_lines_use_the_lock() -> None:
    """Every pip install README shows for the project goes through requirements.lock."""
    installs = [line for line in README.splitlines() if "pip install" in line and " -e " in line]
    assert installs
    for line in installs:
        assert "-c requirements.lock" in line, line
