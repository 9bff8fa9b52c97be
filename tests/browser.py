"""A real headless Chromium (Debian's ``chromium``, installed by ``make test-tools``) for page tests.

``dump_dom`` loads a file and returns the DOM after its scripts ran (``--virtual-time-budget`` lets
timers and rendering settle first, in virtual time, so it does not slow the test), with the wall
time of the whole run and the console lines Chromium logged (``--enable-logging=stderr --v=0``
prints each console message and uncaught error as an ``INFO:CONSOLE`` line; it does not tell
console.error from console.log, so pages should also write their errors into the DOM).
``screenshot`` writes a PNG of the viewport. Each run gets a fresh profile folder, so runs never
share state or lock each other out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]\s*(.*)")


@dataclass
class PageRun:
    dom: str
    wall_s: float  # the whole Chromium run: start, load, scripts, dump
    console: list[str]  # console messages and uncaught errors, as Chromium logged them


def chromium() -> str:
    """The chromium binary; AssertionError (not a skip) when it is missing."""
    path = shutil.which("chromium")
    assert path, "chromium is not installed: run `make test-tools` (it installs Debian's chromium package)"
    return path


def _run(extra: list[str], url: str, timeout_s: float) -> tuple[subprocess.CompletedProcess, float]:
    with tempfile.TemporaryDirectory(prefix="avfuse-chromium-") as profile:
        args = [chromium(), "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
        if os.geteuid() == 0:  # Chromium refuses to run its sandbox as root (containers, CI)
            args.insert(1, "--no-sandbox")
        started = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
        wall_s = time.perf_counter() - started
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc, wall_s


def dump_dom(page: Path, fragment: str = "", budget_ms: int = 2000, timeout_s: float = 60,
             window: str = "1400,1000") -> PageRun:
    """The DOM of ``page`` (opened as ``file://...{fragment}``, e.g. "#e=ID") once its scripts ran."""
    proc, wall_s = _run(["--dump-dom", f"--virtual-time-budget={budget_ms}", f"--window-size={window}"],
                        page.resolve().as_uri() + fragment, timeout_s)
    console = [m.group(1) for m in map(_CONSOLE.search, proc.stderr.splitlines()) if m]
    return PageRun(proc.stdout, wall_s, console)


def screenshot(page: Path, png: Path, window: str = "1400,1000", budget_ms: int = 2000,
               timeout_s: float = 60) -> float:
    """Write ``png``; returns the wall time of the run."""
    png.parent.mkdir(parents=True, exist_ok=True)
    # --run-all-compositor-stages-before-draw: the picture is taken of a finished frame; without it a busy
    # machine can get the blank frame that was current when the time budget ran out.
    _, wall_s = _run([f"--screenshot={png.resolve()}", f"--window-size={window}", f"--virtual-time-budget={budget_ms}",
                      "--run-all-compositor-stages-before-draw"], page.resolve().as_uri(), timeout_s)
    assert png.exists(), f"chromium wrote no screenshot to {png}"
    return wall_s


def png_pixels(png: Path) -> np.ndarray:
    """The PNG as an H x W x 3 uint8 array (decoded with PyAV, which reads PNG as a one-frame video)."""
    import av

    with av.open(str(png)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


_VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())


@dataclass
class Node:
    """An element of a parsed DOM: enough to find elements and count them, no CSS selectors."""

    tag: str
    attrs: dict[str, str]
    children: list["Node | str"]

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str | bool) -> list["Node"]:
        """Descendants (and self) of ``tag`` whose attributes match: a string is compared (``class_`` is
        a class contained), True means present; underscores in names stand for dashes."""
        def match(node: Node) -> bool:
            for key, want in attrs.items():
                name = "class" if key == "class_" else key.replace("_", "-")
                have = node.attrs.get(name)
                if want is True and have is None or want is not True and (
                        have is None or (want not in have.split() if name == "class" else have != want)):
                    return False
            return tag is None or node.tag == tag
        return [n for n in self.iter() if match(n)]

    def text(self) -> str:
        """The text a reader sees (script and style contents left out)."""
        return "".join(c if isinstance(c, str) else "" if c.tag in ("script", "style") else c.text()
                       for c in self.children)


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, [])
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v if v is not None else "" for k, v in attrs}, [])
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}, []))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):  # tolerate unclosed elements, as browsers do
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse_dom(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root
