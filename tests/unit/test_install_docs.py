"""What README and docs/ promise about installing and configuring matches the repository's
files, and every relative link in them leads somewhere."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def doc_block(doc: str, after: str, language: str) -> list[str]:
    """The lines of the first ```language block after the heading `after` in `doc`, a path
    from the repository's root."""
    text = (REPO / doc).read_text()
    assert after in text, f"{doc} has no {after!r}"
    match = re.search(rf"```{language}\n(.*?)```", text[text.index(after) :], re.S)
    assert match, f"no {language} block after {after!r} in {doc}"
    return match[1].splitlines()


def test_going_distributed_shows_every_line_cluster_toml_changes() -> None:
    """docs/operations.md's diff is the real difference of the two shipped configs: each line
    it removes or adds is one the files differ by, and it leaves out none but the opening
    comment."""
    local = (REPO / "config/local.toml").read_text().splitlines()
    cluster = (REPO / "config/cluster.toml").read_text().splitlines()
    changed = [
        line
        for line in difflib.unified_diff(local, cluster, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("---", "+++", "-#", "+#"))
    ]
    shown = doc_block("docs/operations.md", "## Going distributed", "diff")
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
    """Every pip install README and docs/ show for the project goes through requirements.lock."""
    installs = [
        (doc.relative_to(REPO), line)
        for doc in DOCS
        for line in doc.read_text().splitlines()
        if "pip install" in line and " -e " in line
    ]
    assert installs
    for doc, line in installs:
        assert "-c requirements.lock" in line, f"{doc}: {line}"


FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def test_relative_links_lead_to_files() -> None:
    """A link from README or a page of docs/ to a file of the repository (a page moved or
    renamed, a module that moved) points at a file that exists; anchors are not checked."""
    broken = []
    for doc in DOCS:
        text = CODE_SPAN.sub("", FENCE.sub("", doc.read_text()))
        for target in [*LINK.findall(text), *REFERENCE.findall(text)]:
            if re.match(r"[a-z][a-z0-9+.-]*:|#|//", target, re.I):
                continue  # a URL, a mail address or an anchor in the same page
            path = target.split("#", 1)[0].split("?", 1)[0]
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert not broken, "\n".join(broken)
