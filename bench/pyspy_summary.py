"""What a process's GIL time went to, from a py-spy raw (collapsed) profile.

    py-spy record --pid PID --gil --rate 100 --duration 20 --format raw -o prof.txt
    python bench/pyspy_summary.py prof.txt --rate 100 --duration 20

With --gil every sample is a moment some thread held the GIL, so samples / (rate x duration) is how busy the
GIL was, and each function's share says where that time went: inclusive (the function or anything it
called) and self (the function's own line at the top of the stack). Line numbers are dropped.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# Frames every thread or the server loop sits under: left out of the inclusive list, they say nothing.
PLUMBING = ("threading.py", "runpy", "click/", "concurrent/futures/thread.py", "asyncio/runners.py", "uvicorn/")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    parts = Path(m["file"]).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    short = "/".join(parts[-3:])
    return f"{m['func']} ({short})"


def summarize(lines: list[str]) -> tuple[int, Counter, Counter]:
    inclusive: Counter = Counter()
    own: Counter = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = stack.split(";")
        if raw and raw[0].startswith(("thread ", "process ")):  # --threads / --subprocesses prefixes
            raw = raw[1:]
        frames = [frame_name(f) for f in raw]
        total += n
        for name in set(frames):
            inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    return total, inclusive, own


def report(path: Path, rate: float, duration: float, top: int = 25, gil: bool = True) -> str:
    """The top frames of a raw py-spy profile; `gil`: it sampled GIL holders only (else every busy thread, whose
    share of the window is in cores, not of one GIL)."""
    total, inclusive, own = summarize(path.read_text().splitlines())
    if not total:
        return f"{path}: no samples"
    held = "GIL held" if gil else "busy threads, in cores,"
    out = [f"{total} samples; {held} {total / (rate * duration):.0%} of the {duration:.0f} s (rate {rate:.0f}/s)"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out.append(f"-- top {top} {title}")
        rows = [(name, n) for name, n in counter.most_common() if not any(p in name for p in PLUMBING)][:top]
        out += [f"{100 * n / total:5.1f}%  {name}" for name, n in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    print(report(args.profile, args.rate, args.duration, args.top))


if __name__ == "__main__":
    main()
