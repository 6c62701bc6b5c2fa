"""The Dockerfile (no image registry is reachable here, so it is not built): slim, non-root,
the locked dependencies, and its ENTRYPOINT + CMD start a node from the files it copies."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    found = []
    for line in lines:
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def one(name: str) -> str:
    values = [rest for word, rest in instructions() if word == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def test_image_is_slim_non_root_and_locked() -> None:
    """A slim base, a numeric non-root USER, and pip constrained by requirements.lock."""
    assert one("FROM").startswith("python:3.11-slim")
    user = one("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0
    installs = [rest for word, rest in instructions() if word == "RUN" and "pip install" in rest]
    assert installs and all("--constraint requirements.lock" in r for r in installs)


def test_dockerignore_lets_through_what_is_copied() -> None:
    """Every COPY source is let through .dockerignore's allow-list."""
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for word, rest in instructions():
        if word == "COPY":
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in allowed, source


def stage(into: Path) -> Path:
    """The image's WORKDIR as the COPY instructions fill it, from this checkout."""
    workdir = into / one("WORKDIR").lstrip("/")
    workdir.mkdir(parents=True)
    for word, rest in instructions():
        if word != "COPY":
            continue
        *sources, target = rest.split()
        for source in sources:
            src = REPO / source
            dest = workdir / target if target != "./" else workdir / src.name
            if src.is_dir():
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, workdir / src.name)
    return workdir


def test_the_image_command_starts_a_node(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD, run in a copy of only what the image holds, serve /health."""
    workdir = stage(tmp_path)
    command = json.loads(one("ENTRYPOINT")) + json.loads(one("CMD"))
    assert command[0] == "python"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The test's port on loopback (later flags win); everything else as the image runs it.
    argv = [sys.executable, *command[1:], "--host", "127.0.0.1", "--port", str(port)]
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15.0
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.1)
        assert health is not None and health["status"] == "ok", log.read_text()
        assert (workdir / "node").is_dir() and not (workdir / "tests").exists()
    finally:
        proc.send_signal(signal.SIGINT)  # no drain delay: nothing balances to it
        assert proc.wait(timeout=10.0) == 0
