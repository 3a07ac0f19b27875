"""Tiny clips in the formats audio-visual datasets distribute (mp4: MPEG-4 video and AAC sound), for the
converters' tests: a second of a tone under four 16x16 frames, written in about 10 ms."""

from pathlib import Path

import av
import numpy as np

from datamodules.shapes import write_video

RATE = 22_050  # not the extracted 16 kHz, so that the test sees the resampling


def write_clip(path: Path, sound: bool = True) -> Path:
    """An mp4 with a sound track (or, with `sound=False`, the video alone, as write_video writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [np.full((16, 16, 3), 40 * n, dtype=np.uint8) for n in range(4)]
    if not sound:
        write_video(path, frames, fps=4)
        return path
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=4)
        video.width, video.height, video.pix_fmt = 16, 16, "yuv420p"
        audio = container.add_stream("aac", rate=RATE)
        audio.layout = "stereo"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE, dtype=np.float32)
        samples = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        samples.sample_rate = RATE
        container.mux(audio.encode(samples))
        container.mux(audio.encode(None))
        container.mux(video.encode())
    return path
