"""Which bundled speech encoder the demo uses: Whisper-base against openWakeWord's
speech embedding, on the demo's own spoken captions.

Both encoders turn each clip into frame tokens; each clip is summarised by the mean and the max of its
tokens, and a ridge regression from that summary to the caption's MiniLM embedding (mean of tokens) is
fitted on the first emoji of the train split and scored on the first test emoji: speech->text R@1/5/10
among the test captions. The probe is deliberately simple, the same for both, so that it ranks the
encoders' content rather than a training recipe. Also measured: encoding time per clip.

    pip install --no-deps openwakeword==0.5.1 && pip install onnxruntime   # the contender, not a dependency
    python -m benchmarks.speech_encoders [--train 600] [--test 300]        # after `oneencoder data openmoji`
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np
import torch

from datamodules.manifest import read_manifest
from oneencoder.config import EncoderConfig
from oneencoder.encoders import build_encoder
from oneencoder.encoders.bundled import package_folder
from oneencoder.readers import AudioReader

INSTALL_CONTENDER = "pip install --no-deps openwakeword==0.5.1 && pip install onnxruntime"
MAX_SECONDS = 4.0  # the demo's window: its longest spoken caption is 3.7 s
OWW_WINDOW, OWW_STEP = 76, 8  # mel frames per embedding and the hop between them (openWakeWord's)


def summarise(tokens: np.ndarray) -> np.ndarray:
    return np.concatenate([tokens.mean(0), tokens.max(0)])


def whisper_summaries(waves: list[np.ndarray]) -> np.ndarray:
    encoder = build_encoder(EncoderConfig(kind="audio", backend="whisper", pretrained="bundled:whisper-base",
                                          processor={"max_seconds": MAX_SECONDS}))
    rows = []
    for start in range(0, len(waves), 16):
        output = encoder(encoder.preprocess(waves[start : start + 16]))
        rows += [summarise(f[m].numpy()) for f, m in zip(output.features, output.mask)]
    return np.stack(rows)


def openwakeword_summaries(waves: list[np.ndarray]) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError as error:
        raise SystemExit(f"{error}: install the contender first (see this module's docstring)") from None
    # Its models only: importing openwakeword itself needs scikit-learn and tflite.
    models = package_folder("openwakeword", INSTALL_CONTENDER) / "resources" / "models"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    melspectrogram = onnxruntime.InferenceSession(str(models / "melspectrogram.onnx"), options)
    embedding = onnxruntime.InferenceSession(str(models / "embedding_model.onnx"), options)
    rows = []
    for wave in waves:
        # Half a second of silence each side, so the shortest names still fill one 0.76 s window.
        pcm = (np.pad(wave, (8000, 8000)) * 32767).astype(np.float32)[None]
        spectrogram = np.squeeze(melspectrogram.run(None, {melspectrogram.get_inputs()[0].name: pcm})[0])
        spectrogram = spectrogram / 10 + 2  # as openWakeWord scales it
        windows = np.stack([spectrogram[i : i + OWW_WINDOW]
                            for i in range(0, len(spectrogram) - OWW_WINDOW + 1, OWW_STEP)])[..., None]
        tokens = embedding.run(None, {embedding.get_inputs()[0].name: windows.astype(np.float32)})[0]
        rows.append(summarise(tokens.reshape(len(windows), -1)))
    return np.stack(rows)


def caption_embeddings(captions: list[str]) -> np.ndarray:
    encoder = build_encoder(EncoderConfig(kind="text", pretrained="bundled:all-MiniLM-L6-v2"))
    output = encoder(encoder.preprocess(captions))
    mask = output.mask[..., None].float()
    pooled = (output.features * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def ridge_recall(x: np.ndarray, y: np.ndarray, train: int) -> dict[str, float]:
    """Best over a few ridge strengths of speech->text R@k on the held-out rows."""
    mean, std = x[:train].mean(0), x[:train].std(0) + 1e-6
    x = (x - mean) / std
    best: dict[str, float] = {}
    for strength in (1.0, 10.0, 100.0, 1000.0):
        weights = np.linalg.solve(x[:train].T @ x[:train] + strength * np.eye(x.shape[1]), x[:train].T @ y[:train])
        predicted = x[train:] @ weights
        predicted /= np.linalg.norm(predicted, axis=1, keepdims=True)
        similarity = predicted @ y[train:].T
        ranks = (similarity > similarity.diagonal()[:, None]).sum(1)
        recall = {f"R@{k}": float((ranks < k).mean()) for k in (1, 5, 10)}
        if recall["R@1"] > best.get("R@1", -1.0):
            best = recall
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="data/openmoji/manifest.jsonl")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=300)
    args = parser.parse_args()
    records = [r for r in read_manifest(args.manifest) if "audio" in r.fields]
    chosen = [r for r in records if r.split == "train"][: args.train] + [r for r in records if r.split == "test"][: args.test]
    read = AudioReader(16000, MAX_SECONDS)
    waves = [read(r.path("audio"), None) for r in chosen]
    targets = caption_embeddings([r.captions()[0] for r in chosen])
    encoders: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
        "openWakeWord speech embedding (96-d per 80 ms)": openwakeword_summaries,
        "whisper-base (512-d per 20 ms)": whisper_summaries,
    }
    results = {}
    for name, summaries in encoders.items():
        started = time.perf_counter()
        features = summaries(waves)
        per_clip = (time.perf_counter() - started) / len(waves)
        results[name] = {"ms_per_clip": round(1000 * per_clip, 1),
                         **ridge_recall(features, targets, args.train)}
    print(json.dumps({"train": args.train, "test": args.test, "chance_R@1": 1 / args.test, **results}, indent=2))


if __name__ == "__main__":
    main()
