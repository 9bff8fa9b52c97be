"""Looking at a running `avfuse run` from outside: its HTTP endpoints and its processes."""

from __future__ import annotations

import os
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path


def http_status(port: int, path: str, timeout_s: float = 2.0) -> int | None:
    """The status of GET path, or None when nothing answered in time."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def metric_total(port: int, name: str) -> float:
    """The sum of every sample of one metric on the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.M)
    return sum(float(value) for value in pattern.findall(text))


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    children, found, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stream_actor_pids(service_pid: int) -> list[int]:
    """The service's stream actor processes (Ray names them ``ray::StreamActor``)."""
    pids = []
    for pid in descendants(service_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::StreamActor"):
            pids.append(pid)
    return pids


def kill_stream_actors(service_pid: int) -> int:
    """SIGKILL every stream actor of the service, as the OOM killer would; how many."""
    killed = 0
    for pid in stream_actor_pids(service_pid):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed
