"""Real live sources for the reconnect tests: an RTSP camera and an HLS live stream.

Plain classes, no pytest, so a benchmark or a shell can use them too. Each runs its
servers as child processes and always ends them: on stop(), at the end of a `with`
block, when garbage-collected and at interpreter exit.

    with RtspServer(file=clip) as camera:        # or RtspServer(test=True): a live test pattern
        av.open(camera.url, options={"rtsp_transport": "tcp"}, timeout=(5, 5))
        camera.kill()       # a dead camera: the process is gone, its sockets close
        camera.restart()    # back on the same port, media time 0 again
        camera.freeze()     # a hung camera: connections stay open, nothing is sent
        camera.thaw()

    with HlsServer(clip) as hls:                 # ffmpeg writing live.m3u8, http.server serving it
        av.open(hls.url, timeout=(5, 2))
        hls.kill_writer()   # the playlist stops growing; the last segments stay served
        hls.restart_writer()

RtspServer needs Debian's /usr/bin/python3 with python3-gi and gir1.2-gst-rtsp-server-1.0;
HlsServer needs Debian's /usr/bin/ffmpeg (`make test-tools` installs both).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RTSP_SERVER_SCRIPT = REPO / "tests" / "live_servers" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
SYSTEM_FFMPEG = "/usr/bin/ffmpeg"


class LiveServerError(RuntimeError):
    """A live server did not start; the message carries the tail of its stderr."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtsp_server_available() -> bool:
    """Whether Debian's python3 can load GstRtspServer (what RtspServer needs)."""
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    check = 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer'
    return subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True).returncode == 0


def hls_writer_available() -> bool:
    return os.access(SYSTEM_FFMPEG, os.X_OK)


def _end_process(proc: subprocess.Popen | None) -> None:
    """SIGKILL and reap; a stopped (frozen) process dies of SIGKILL too."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait(10)


class _Lines:
    """Reads a child's text stream on a daemon thread: keeps its tail, hands each line to a callback."""

    def __init__(self, stream, on_line=None, keep: int = 50):
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)
        self._on_line = on_line
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.tail.append(line)
            if self._on_line is not None:
                self._on_line(line)
        stream.close()

    def text(self) -> str:
        return "\n".join(self.tail)


class RtspServer:
    """tests/live_servers/rtsp_server.py in its own process: one shared media at rtsp://127.0.0.1:PORT/cam.

    file: an H.264 + AAC mp4, sent in real time as stored (loop=True: again and again,
    timestamps rising); test=True: a live 320x240 25 fps test pattern with a 440 Hz tone.
    port=0 picks a free port at the first start(); restart() keeps it.

    After start(): url, port, and started_wall_s, the Unix wall time at which media time 0
    of the current media left the server (None until a client plays it). The server
    makes a new media, from media time 0, whenever a client comes after the last one
    left; started_walls_s lists every such start.
    """

    def __init__(self, file: str | os.PathLike | None = None, test: bool = False, port: int = 0,
                 loop: bool = False, ready_timeout_s: float = 10.0):
        if (file is None) == (not test):
            raise ValueError("give either file= or test=True")
        self.file = None if file is None else Path(file)
        self.test, self.loop, self.port = test, loop, port
        self.ready_timeout_s = ready_timeout_s
        self.url: str | None = None
        self.started_walls_s: list[float] = []
        self.proc: subprocess.Popen | None = None
        self._ready = threading.Event()
        self._stderr: _Lines | None = None
        self._finalizer = None

    @property
    def started_wall_s(self) -> float | None:
        return self.started_walls_s[-1] if self.started_walls_s else None

    def wait_started(self, timeout_s: float = 5.0) -> float:
        """The wall time of media time 0, waiting for a client's PLAY to have started it."""
        deadline = time.monotonic() + timeout_s
        while self.started_wall_s is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.started_wall_s is None:
            raise LiveServerError(f"RTSP media did not start within {timeout_s} s")
        return self.started_wall_s

    def start(self) -> "RtspServer":
        if self.proc is not None and self.proc.poll() is None:
            raise LiveServerError("RTSP server already running")
        args = [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), "--port", str(self.port)]
        args += ["--test"] if self.test else ["--file", str(self.file)] + (["--loop"] if self.loop else [])
        self._ready.clear()
        self.started_walls_s = []
        # stdin stays open as a lifeline: the server quits when it closes, so it cannot
        # outlive this process even if nobody calls stop().
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self._finalizer = weakref.finalize(self, _end_process, self.proc)
        _Lines(self.proc.stdout, self._on_stdout)
        self._stderr = _Lines(self.proc.stderr)
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _end_process(self.proc)
                raise LiveServerError(f"RTSP server not ready (exit {self.proc.returncode}):\n{self.log()}")
        return self

    def _on_stdout(self, line: str) -> None:
        word, _, value = line.partition(" ")
        if word == "READY":
            self.url = value
            self.port = int(re.search(r":(\d+)/", value).group(1))
            self._ready.set()
        elif word == "STARTED":
            self.started_walls_s.append(float(value))

    def log(self) -> str:
        """The tail of the server's stderr."""
        return self._stderr.text() if self._stderr is not None else ""

    def kill(self) -> None:
        """A dead camera: SIGKILL, so the kernel closes its sockets with no RTSP goodbye."""
        _end_process(self.proc)

    def freeze(self) -> None:
        """A hung camera: SIGSTOP. Its TCP connections stay open and nothing more is sent."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> "RtspServer":
        """The camera coming back: a new process on the same port, its media from time 0."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.thaw()
            self.proc.stdin.close()  # the server's signal to quit
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        _end_process(self.proc)

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class HlsServer:
    """A live HLS stream: Debian's ffmpeg writing DIR/live.m3u8 in real time, http.server serving DIR.

    file is read with -re and -stream_loop -1, so the stream runs until stopped. reencode=True
    (the default) re-encodes to H.264 with a keyframe every segment_s, so segments come out
    segment_s long; reencode=False copies the file's packets, and segments are cut at its
    keyframes (every 2 s for pipeline.app.sample's clips). The playlist keeps list_size
    segments and older ones are deleted, as a live camera's does.

    After start(): url (http://127.0.0.1:PORT/live.m3u8), directory, playlist_text().
    """

    def __init__(self, file: str | os.PathLike, segment_s: float = 1, list_size: int = 5,
                 directory: str | os.PathLike | None = None, reencode: bool = True,
                 ready_timeout_s: float = 15.0):
        self.file, self.segment_s, self.list_size = Path(file), segment_s, list_size
        self.reencode, self.ready_timeout_s = reencode, ready_timeout_s
        self._own_directory = directory is None
        self.directory = Path(directory) if directory is not None else None
        self.url: str | None = None
        self.port: int | None = None
        self.writer: subprocess.Popen | None = None
        self.http: subprocess.Popen | None = None
        self._writer_log: _Lines | None = None
        self._finalizers: list[weakref.finalize] = []

    @property
    def playlist(self) -> Path:
        return self.directory / "live.m3u8"

    def playlist_text(self) -> str:
        try:
            return self.playlist.read_text()
        except FileNotFoundError:
            return ""

    def segment_count(self) -> int:
        return self.playlist_text().count("#EXTINF")

    def start(self) -> "HlsServer":
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="avfuse-hls-"))
            self._finalizers.append(weakref.finalize(self, shutil.rmtree, self.directory, True))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._start_http()
        self._start_writer()
        self._wait_for_segments(2)
        return self

    def _start_http(self) -> None:
        # Port 0 and the port read back from http.server's banner: no window for a clash.
        self.http = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
             str(self.directory)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        self._finalizers.append(weakref.finalize(self, _end_process, self.http))
        banner = self.http.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://...) ..."
        match = re.search(r" port (\d+)", banner)
        if match is None:
            _end_process(self.http)
            raise LiveServerError(f"http.server did not start: {banner!r}")
        self.http.stdout.close()
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}/live.m3u8"

    def writer_args(self) -> list[str]:
        if self.reencode:
            codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
                      "-force_key_frames", f"expr:gte(t,n_forced*{self.segment_s})", "-sc_threshold", "0",
                      "-c:a", "aac"]
        else:
            codecs = ["-c", "copy"]
        # append_list: a restarted writer reads the old playlist and goes on from its last
        # media sequence and segment number, behind an EXT-X-DISCONTINUITY, so a client
        # sees the same live playlist grow again, as after a camera's encoder restart.
        # omit_endlist: even a clean stop does not mark the stream as ended.
        return [SYSTEM_FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
                "-i", str(self.file), *codecs, "-f", "hls", "-hls_time", str(self.segment_s),
                "-hls_list_size", str(self.list_size),
                "-hls_flags", "delete_segments+append_list+omit_endlist",
                "-hls_segment_filename", str(self.directory / "seg%05d.ts"), str(self.playlist)]

    def _start_writer(self) -> None:
        self.writer = subprocess.Popen(self.writer_args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
        self._finalizers.append(weakref.finalize(self, _end_process, self.writer))
        self._writer_log = _Lines(self.writer.stderr)

    def _wait_for_segments(self, count: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while self.segment_count() < count:
            if self.writer.poll() is not None or time.monotonic() > deadline:
                log = self._writer_log.text()
                self.stop()
                raise LiveServerError(f"HLS writer made no {count} segments (exit {self.writer.returncode}):\n{log}")
            time.sleep(0.05)

    def log(self) -> str:
        """The tail of ffmpeg's stderr."""
        return self._writer_log.text() if self._writer_log is not None else ""

    def kill_writer(self) -> None:
        """A dead encoder: SIGKILL ffmpeg. The playlist and its segments stay, served, and stale."""
        _end_process(self.writer)

    def restart_writer(self) -> None:
        """The encoder coming back: ffmpeg again into the same directory, the playlist continued."""
        self.kill_writer()
        before = self.segment_count()
        sequence_before = self.media_sequence()
        self._start_writer()
        # Ready once the new writer has added a segment of its own to the playlist.
        deadline = time.monotonic() + self.ready_timeout_s
        while (self.media_sequence(), self.segment_count()) <= (sequence_before, before):
            if self.writer.poll() is not None or time.monotonic() > deadline:
                raise LiveServerError(f"restarted HLS writer added no segment:\n{self.log()}")
            time.sleep(0.05)

    def media_sequence(self) -> int:
        match = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", self.playlist_text())
        return int(match.group(1)) if match else -1

    def stop(self) -> None:
        _end_process(self.writer)
        _end_process(self.http)
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "HlsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
