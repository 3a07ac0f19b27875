"""A video as a browser can play it, for the search page's players.

Browsers decode H.264, VP8, VP9 and AV1 video; the demo's clips (and those of the shapes sets) are
MPEG-4 part 2, which no browser plays: their players would stay black. Such a clip is re-encoded here,
with PyAV (FFmpeg, already a dependency), to a VP8 WebM (libvpx's real-time mode: a 3 s clip at 224
pixels takes well under a second on one core), silent (the page links the original file, sound and
all). A clip a browser can play is served as it is; one too long to re-encode per request too (its
player may stay black, its link still works).
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import av

PLAYABLE_CODECS = {"h264", "vp8", "vp9", "av1"}  # video codecs every current browser decodes
PLAYABLE_CONTAINERS = ("mp4", "webm", "matroska", "mov")  # FFmpeg's demuxer names list several formats
MAX_TRANSCODED_SECONDS = 60.0  # longer clips are not re-encoded on a request (seconds of CPU each)


def needs_transcoding(path: Path) -> bool:
    """Whether a browser would fail on this file's video and it is short enough to re-encode."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return False
            stream = container.streams.video[0]
            playable = (stream.codec_context.name in PLAYABLE_CODECS
                        and any(name in container.format.name.split(",") for name in PLAYABLE_CONTAINERS))
            seconds = container.duration / av.time_base if container.duration else 0.0
            return not playable and seconds <= MAX_TRANSCODED_SECONDS
    except av.FFmpegError:
        return False  # the browser gets the file and says what it makes of it


@lru_cache(maxsize=64)
def webm(path: Path, modified: float) -> bytes:
    """The file's first video stream as a silent VP8 WebM; `modified` (the file's mtime) keys the cache,
    so a clip replaced in place is encoded again."""
    buffer = io.BytesIO()
    with av.open(str(path)) as source, av.open(buffer, "w", format="webm") as target:
        video = source.streams.video[0]
        rate = video.average_rate or 25
        stream = target.add_stream("libvpx", rate=rate)
        # yuv420p needs even sides; libvpx would refuse an odd one.
        stream.width, stream.height = video.codec_context.width // 2 * 2, video.codec_context.height // 2 * 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8", "b": "2M"}
        for frame in source.decode(video):
            picture = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            picture.pts = None  # the encoder numbers frames at `rate`
            target.mux(stream.encode(picture))
        target.mux(stream.encode())
    return buffer.getvalue()
