"""A real RTSP camera for the tests: gst-rtsp-server serving a file or a live test pattern.

Runs only with Debian's /usr/bin/python3 (python3-gi and gir1.2-gst-rtsp-server-1.0);
tests/live_sources.py:RtspServer starts it and reads its stdout.

    /usr/bin/python3 tests/live_servers/rtsp_server.py --port 0 --file clip.mp4 [--loop]
    /usr/bin/python3 tests/live_servers/rtsp_server.py --port 8554 --test

stdout carries exactly these lines, each flushed:
    READY rtsp://127.0.0.1:PORT/cam    once the server is listening
    STARTED <unix wall time, s>        when media time 0 leaves the server

The media is shared, so every client sees the same timeline, as with a real camera.
gst-rtsp-server drops it when its last client leaves; the next client gets a new media
that starts at media time 0 again, and a new STARTED line.
A file is sent in real time: the media's sinks sync to the pipeline clock. Served once,
its clients see the stream end at the file's end; --loop makes it a camera that runs on.
The server exits when its stdin closes, so a test process that dies does not leave it behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

MOUNT = "/cam"


def file_launch(path: str) -> str:
    # Parsed and payloaded as stored, not re-encoded: the client sees the file's own
    # frames and keyframes. config-interval=-1 sends SPS/PPS with every keyframe, so a
    # client that joins mid-stream can start decoding at the next one.
    location = path.replace("\\", "\\\\").replace('"', '\\"')
    return (f'( filesrc location="{location}" ! qtdemux name=d '
            "d.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 "
            "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )")


def test_launch() -> str:
    aac = "avenc_aac" if Gst.ElementFactory.find("avenc_aac") else "voaacenc"
    return ("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=25/1 "
            "! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=500 "
            "! video/x-h264,profile=baseline ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 "
            "audiotestsrc is-live=true wave=sine freq=440 samplesperbuffer=1024 "
            f"! audioconvert ! audioresample ! audio/x-raw,rate=16000,channels=1 ! {aac} "
            "! aacparse ! rtpmp4gpay name=pay1 pt=97 )")


def media_pipeline(media: GstRtspServer.RTSPMedia) -> Gst.Element:
    """The pipeline that holds the launch line's bin, the payloaders and rtsp-server's sinks."""
    element = media.get_element()
    while element.get_parent() is not None:
        element = element.get_parent()
    return element


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class StartClock:
    """Prints STARTED once per media: the wall time at which the first buffer of pay0 is due.

    The first buffer leaves the payloader during preroll, before the client's PLAY, and
    the sinks then hold it until its running time comes. So the moment is computed, not
    observed: wall time of running time rt = now - (clock now - base time - rt), taken
    once the pipeline plays and the first buffer's running time is known.
    """

    def __init__(self) -> None:
        self.media: GstRtspServer.RTSPMedia | None = None
        self.first_running_ns: int | None = None
        self.playing = False
        self.printed = False

    def attach(self, media: GstRtspServer.RTSPMedia) -> None:
        self.media = media
        pay0 = media.get_element().get_by_name("pay0")
        pay0.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._on_buffer)
        media.connect("new-state", self._on_state)

    def _on_buffer(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        segment_event = pad.get_sticky_event(Gst.EventType.SEGMENT, 0)
        buffer = info.get_buffer()
        self.first_running_ns = 0
        if segment_event is not None and buffer.pts != Gst.CLOCK_TIME_NONE:
            running_ns = segment_event.parse_segment().to_running_time(Gst.Format.TIME, buffer.pts)
            if running_ns != Gst.CLOCK_TIME_NONE:
                self.first_running_ns = running_ns
        GLib.idle_add(self._start_polling)
        return Gst.PadProbeReturn.REMOVE

    def _on_state(self, media: GstRtspServer.RTSPMedia, state: int) -> None:
        if state == Gst.State.PLAYING:
            self.playing = True
            GLib.idle_add(self._start_polling)

    def _start_polling(self) -> bool:
        # The pipeline's clock and base time are set as it goes to PLAYING, which may
        # come a little after rtsp-media reports the state: look again every 5 ms.
        if self._try_print():
            GLib.timeout_add(5, self._try_print)
        return False

    def _try_print(self) -> bool:
        """Prints when it can; returns whether to try again."""
        if self.printed or not self.playing or self.first_running_ns is None:
            return False
        pipeline = media_pipeline(self.media)
        clock, base_ns = pipeline.get_clock(), pipeline.get_base_time()
        if clock is None or pipeline.get_state(0)[1] != Gst.State.PLAYING:
            return True
        running_now_ns = clock.get_time() - base_ns
        say(f"STARTED {time.time() - (running_now_ns - self.first_running_ns) / 1e9:.6f}")
        self.printed = True
        return False


class Looper:
    """Plays the file again from the start when it ends, without a gap or overlap in running time.

    A non-flushing segment seek, renewed at each segment-done, keeps the running time (and
    so the RTP timestamps) rising across loops, as a camera's clock would. qtdemux starts
    the next loop where its last buffer began, not where the segment stopped, so each
    stream's next loop would repeat one frame duration of timestamps: its segment's base
    is set here to where the previous loop's segment ended instead.
    """

    def __init__(self) -> None:
        self.pipeline: Gst.Element | None = None
        self.seek_pending = False
        self.previous_segment: dict[str, Gst.Segment] = {}  # by demuxer pad name
        self.looped_pads: set[str] = set()

    def attach(self, media: GstRtspServer.RTSPMedia) -> None:
        demux = media.get_element().get_by_name("d")
        demux.connect("pad-added", self._on_pad)
        media.connect("new-state", self._on_state)

    def _on_pad(self, demux: Gst.Element, pad: Gst.Pad) -> None:
        pad.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._on_event)

    def _on_state(self, media: GstRtspServer.RTSPMedia, state: int) -> None:
        if state == Gst.State.PLAYING and self.pipeline is None:
            self.pipeline = media_pipeline(media)
            self._seek(Gst.SeekFlags.FLUSH | Gst.SeekFlags.SEGMENT)

    def _on_event(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        event = info.get_event()
        name = pad.get_name()
        if event.type == Gst.EventType.SEGMENT_DONE:
            self.looped_pads.add(name)
            if not self.seek_pending:
                self.seek_pending = True  # every demuxer pad reports it; seek once
                GLib.idle_add(self._loop)
        elif event.type == Gst.EventType.SEGMENT:
            segment = event.parse_segment()
            previous = self.previous_segment.get(name)
            if name in self.looped_pads and previous is not None:
                self.looped_pads.discard(name)
                segment = segment.copy()
                segment.base = previous.base + (previous.stop - previous.start)
                self.previous_segment[name] = segment
                pad.push_event(Gst.Event.new_segment(segment))  # passes this probe as a fresh segment
                return Gst.PadProbeReturn.DROP
            self.previous_segment[name] = segment
        return Gst.PadProbeReturn.OK

    def _loop(self) -> bool:
        self.seek_pending = False
        self._seek(Gst.SeekFlags.SEGMENT)
        return False

    def _seek(self, flags: Gst.SeekFlags) -> None:
        self.pipeline.seek(1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, Gst.SeekType.END, 0)


def watch_stdin_eof(loop: GLib.MainLoop) -> None:
    def on_stdin(channel: GLib.IOChannel, condition: GLib.IOCondition) -> bool:
        if condition & (GLib.IOCondition.HUP | GLib.IOCondition.ERR) or not os.read(0, 4096):
            loop.quit()
            return False
        return True

    GLib.io_add_watch(GLib.IOChannel.unix_new(0), GLib.PRIORITY_DEFAULT,
                      GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR, on_stdin)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="service port; 0 picks a free one")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="an H.264 + AAC mp4 to serve")
    source.add_argument("--test", action="store_true", help="a live test pattern and tone")
    parser.add_argument("--loop", action="store_true", help="with --file: start again at the end")
    parser.add_argument("--no-stdin-watch", action="store_true", help="keep running when stdin closes")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(file_launch(os.path.abspath(args.file)) if args.file else test_launch())
    factory.set_shared(True)  # one camera timeline for every client, as a real camera has

    def on_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        StartClock().attach(media)
        if args.file and args.loop:
            Looper().attach(media)

    factory.connect("media-configure", on_configure)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    if not args.no_stdin_watch:
        watch_stdin_eof(loop)
    say(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{MOUNT}")
    try:
        loop.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
