"""A video's sound as the manifest's `audio` file: the audio readers decode with soundfile, which does
not open mp4, so the converters of audio-visual datasets (AVE, VGGSound) write each clip's audio track
once as a 16 kHz mono 16-bit wav beside the manifest (16 kHz: what the paper's audio encoders take;
10 s of it is 320 kB, where the clip's 44.1 kHz stereo would be 1.7 MB, times 200,000 VGGSound clips).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile

from oneencoder.files import atomic_path

SAMPLING_RATE = 16_000
NO_AUDIO = "no audio track"
UNDECODABLE = "audio track not decodable"


def extract_audio(video: Path, wav: Path) -> str | None:
    """Write `video`'s first audio track to `wav` (left alone when it exists: a rerun decodes nothing,
    and the atomic write means an existing file is whole). Returns None, or why there is no wav: the
    reason a converter counts as a skip, since one broken clip in 200,000 should not stop a conversion."""
    if wav.is_file():
        return None
    try:
        with av.open(str(video)) as container:
            if not container.streams.audio:
                return NO_AUDIO
            samples = _decode(container)
    except (av.error.FFmpegError, ValueError):
        return UNDECODABLE
    if samples.size == 0:
        return UNDECODABLE
    wav.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(wav) as tmp:
        soundfile.write(tmp, samples, SAMPLING_RATE, subtype="PCM_16", format="WAV")
    return None


def _decode(container: av.container.InputContainer) -> np.ndarray:
    """The first audio track, resampled to mono int16 at SAMPLING_RATE, as one (samples,) array."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLING_RATE)
    chunks = [frame.to_ndarray().reshape(-1)
              for decoded in container.decode(container.streams.audio[0])
              for frame in resampler.resample(decoded)]
    chunks += [frame.to_ndarray().reshape(-1) for frame in resampler.resample(None)]  # flush
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
