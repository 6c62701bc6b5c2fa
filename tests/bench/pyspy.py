"""py-spy for the profile summaries of queue_bench.py and store_bench.py: finding it,
recording a pid (`Recorder`, `recording`), and reading its raw (collapsed) stacks:
`frame;frame;... count` lines, frames `function (file:line)`, recorded with
--full-filenames."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import harness
from harness import BenchError

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
Stack = tuple[list[tuple[str, str]], int]  # (function, file) innermost last, samples
# Where py-spy may be besides PATH: a venv of its own, or the queue bench's Celery venv.
VENVS = (Path("/tmp/pyspy"), Path("/tmp/qbench-celery"))


def find(given: str) -> str:
    """The py-spy binary: `given` (--py-spy), else on PATH, else in one of VENVS."""
    found = [given, shutil.which("py-spy") or ""] + [str(v / "bin" / "py-spy") for v in VENVS]
    for candidate in found:
        if candidate and Path(candidate).exists():
            return candidate
    raise BenchError(
        f"--profile needs py-spy: python -m venv {VENVS[0]} && "
        f"{VENVS[0]}/bin/pip install py-spy (or --py-spy PATH)"
    )


class Recorder:
    """py-spy recording one pid (itself pinned to `cpu_no`) until stopped: raw collapsed
    stacks, whole ones (--full-filenames, blocking), idle samples left out."""

    def __init__(self, binary: str, pid: int, out: Path, cpu_no: int, log_dir: Path) -> None:
        self.out = out
        argv = [binary, "record", "--pid", str(pid), "--rate", "500", "--format", "raw"]
        argv += ["--output", str(out), "--full-filenames"]
        self.proc = harness.start(out.stem + "-py-spy", argv, cpu=cpu_no, log_dir=log_dir)
        time.sleep(0.5)  # attached

    def stop(self) -> Path:
        if self.proc.popen.poll() is None:
            self.proc.popen.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                harness.stop(self.proc)
        if not self.out.exists():
            raise BenchError(f"py-spy wrote no {self.out}:\n{self.proc.log_tail()}")
        return self.out


@contextlib.contextmanager
def recording(binary: str, pid: int, out: Path, cpu_no: int, log_dir: Path) -> Iterator[None]:
    """A Recorder of `pid` while the block runs."""
    recorder = Recorder(binary, pid, out, cpu_no, log_dir)
    try:
        yield
    finally:
        recorder.stop()


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
