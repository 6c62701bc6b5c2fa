"""Reading py-spy's raw (collapsed) stacks, for the profile summaries of queue_bench.py and
store_bench.py: `frame;frame;... count` lines, frames `function (file:line)`, recorded with
--full-filenames."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
Stack = tuple[list[tuple[str, str]], int]  # (function, file) innermost last, samples


def parse(path: Path) -> tuple[list[Stack], int]:
    """The stacks, and the samples spent starting up (imports, settings), left out."""
    stacks, startup = [], 0
    for line in path.read_text(errors="replace").splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        if "importlib" in frames_text or "load_settings" in frames_text:
            startup += int(count)
            continue
        frames = []
        for frame in frames_text.split(";"):
            m = FRAME.match(frame)
            frames.append((m["func"], m["file"]) if m else (frame, ""))
        stacks.append((frames, int(count)))
    return stacks, startup


def short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def library(file: str, libraries: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The label of the first of `libraries` (label, path needles) the file belongs to."""
    for label, needles in libraries:
        if any(n in file for n in needles):
            return label
    return "other"
