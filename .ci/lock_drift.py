"""Compare `pip freeze` (stdin) with requirements.lock: print each package whose installed
version differs from the lock's pin. With --strict, exit 1 on any difference (the locked
CI run must install exactly the lock); without, only report (the unlocked run's drift)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, set[str]]:
    """name -> pinned versions (a lock may pin two, one per Python version marker)."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            found.setdefault(canonical(match[1]), set()).add(match[2])
    return found


def main(argv: list[str]) -> int:
    strict = "--strict" in argv
    lock = pins(Path(next(a for a in argv if not a.startswith("--"))).read_text())
    installed = pins(sys.stdin.read())
    drift = [
        f"{name}: installed {sorted(versions)[0]}, locked {' or '.join(sorted(lock[name]))}"
        for name, versions in sorted(installed.items())
        if name in lock and not versions & lock[name]
    ]
    unlocked = [name for name in sorted(installed) if name not in lock]
    for line in drift:
        print(f"[ci] drift: {line}")
    for name in unlocked:
        print(f"[ci] not in the lock: {name}")
    if not drift and not unlocked:
        print(f"[ci] installed exactly the lock ({len(installed)} packages)")
    return 1 if strict and (drift or unlocked) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
