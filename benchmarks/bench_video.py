"""Pretraining video decoding: decord (FrameSource's reader) against torchcodec on VoxCeleb2-like mp4s.

Writes H.264 mp4s like VoxCeleb2's (224x224, 25 fps, 8 s; a moving portrait with sensor noise, libx264 through the
`ffmpeg` command), then, side by side in one run, repeated (median [min-max]), one process and one decoding thread
each: clips/s per core for the exact frames `datasets_pretrain.pretrain_indices` asks for (16 frames at rate 4),
opening the file per clip as a loader worker does, and whether both give the same frames: for every requested
index the torchcodec frame must be closest to decord's frame at that index (not a neighbour), and the pixel
difference is reported. torchcodec is optional (pip install torchcodec; it needs FFmpeg's libraries).

    python benchmarks/bench_video.py [--videos 8 --clips 200 --repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets_pretrain import pretrain_indices  # noqa: E402
from demo_data import face_photo  # noqa: E402


def make_voxceleb2_like(path: Path, seconds: float, fps: int, size: int, rng: np.random.Generator) -> None:
    """An H.264 (libx264, yuv420p) mp4 of the portrait drifting and zooming, with sensor-like noise."""
    if shutil.which("ffmpeg") is None:
        raise OSError("the ffmpeg command is needed to write H.264 (e.g. apt-get install ffmpeg)")
    photo = face_photo()
    phase = rng.uniform(0, 2 * np.pi, 3)
    command = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}",
               "-r", str(fps), "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    with subprocess.Popen(command, stdin=subprocess.PIPE) as encoder:
        for i in range(round(seconds * fps)):
            t = i / fps
            scale = size / 380 * (1 + 0.1 * np.sin(2 * np.pi * t / 5 + phase[0]))
            shift = (size / 2 - scale * 256 + 12 * np.sin(2 * np.pi * t / 4 + phase[1]),
                     size / 2 - scale * 280 + 8 * np.sin(2 * np.pi * t / 3 + phase[2]))
            frame = cv2.warpAffine(photo, np.array([[scale, 0, shift[0]], [0, scale, shift[1]]]), (size, size),
                                   flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
            noisy = frame.astype(np.int16) + rng.normal(0, 2, frame.shape).astype(np.int16)
            encoder.stdin.write(np.clip(noisy, 0, 255).astype(np.uint8).tobytes())
        encoder.stdin.close()
    if encoder.returncode:
        raise OSError(f"{path}: ffmpeg failed ({encoder.returncode})")


def decord_frames(path: str, indices: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8, as datasets.FrameSource reads a video (one decoding thread)."""
    import decord

    return decord.VideoReader(path, num_threads=1).get_batch(indices.tolist()).asnumpy()


def torchcodec_reader(device: str, seek_mode: str):
    from torchcodec.decoders import VideoDecoder

    def frames(path: str, indices: np.ndarray) -> np.ndarray:
        decoder = VideoDecoder(path, seek_mode=seek_mode, num_ffmpeg_threads=1, device=device)
        return decoder.get_frames_at(indices.tolist()).data.permute(0, 2, 3, 1).cpu().numpy()

    return frames


def frame_count(path: str) -> int:
    import decord

    return len(decord.VideoReader(path, num_threads=1))


def clip_requests(videos: list[str], clips: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """(video, distinct frame indices) of `clips` pretraining clips, as PretrainDataset asks for them."""
    np.random.seed(seed)
    counts = {v: frame_count(v) for v in videos}
    requests = []
    for i in range(clips):
        video = videos[i % len(videos)]
        requests.append((video, np.unique(pretrain_indices(counts[video], 16, 4, 1))))
    return requests


def rates(readers: list, requests: list[tuple[str, np.ndarray]], chunk: int = 10) -> list[float]:
    """Clips/s of each reader over `requests`; they take turns every `chunk` clips, so that other load on the
    machine affects them alike."""
    seconds = [0.0] * len(readers)
    for begin in range(0, len(requests), chunk):
        for k, reader in enumerate(readers):
            start = time.perf_counter()
            for path, indices in requests[begin:begin + chunk]:
                reader(path, indices)
            seconds[k] += time.perf_counter() - start
    return [len(requests) / s for s in seconds]


def agreement(ours, reference, requests: list[tuple[str, np.ndarray]]) -> tuple[bool, float, int]:
    """(every frame closest to the reference's frame at its index, mean |diff| levels, max |diff|)."""
    aligned, diffs, worst = True, [], 0
    for path, indices in requests:
        neighbours = np.unique(np.clip(np.concatenate([indices - 1, indices, indices + 1]), 0, None))
        neighbours = neighbours[neighbours < frame_count(path)]
        ref = dict(zip(neighbours.tolist(), reference(path, neighbours).astype(np.int16)))
        for index, frame in zip(indices.tolist(), ours(path, indices).astype(np.int16)):
            errors = {j: np.abs(frame - ref[j]).mean() for j in (index - 1, index, index + 1) if j in ref}
            aligned &= min(errors, key=errors.get) == index or errors[index] == min(errors.values())
            diffs.append(errors[index])
            worst = max(worst, int(np.abs(frame - ref[index]).max()))
    return aligned, float(np.mean(diffs)), worst


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("pretraining video decoding: decord vs torchcodec", add_help=True)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--clips", type=int, default=200, help="clips timed per decoder and run")
    p.add_argument("--check_clips", type=int, default=40, help="clips whose frames are compared")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="also torchcodec on this device (cuda: NVDEC)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    readers = {"decord": decord_frames}
    try:
        import torchcodec

        for mode in ("exact", "approximate"):
            readers[f"torchcodec {torchcodec.__version__} ({mode} seek)"] = torchcodec_reader("cpu", mode)
        if args.device != "cpu":
            readers[f"torchcodec on {args.device}"] = torchcodec_reader(args.device, "approximate")
    except (ImportError, RuntimeError, OSError) as err:
        print(f"torchcodec unavailable: {type(err).__name__}: {err}")
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(args.seed)
        videos = []
        for i in range(args.videos):
            videos.append(str(Path(tmp) / f"{i:03d}.mp4"))
            make_voxceleb2_like(Path(videos[-1]), args.seconds, args.fps, args.size, rng)
        kb = np.mean([Path(v).stat().st_size for v in videos]) / 1024
        print(f"{args.videos} H.264 mp4s, {args.size}x{args.size}, {args.fps} fps, {args.seconds:g} s "
              f"({frame_count(videos[0])} frames, {kb:.0f} KB each); 16 frames at rate 4 per clip")
        requests = clip_requests(videos, args.clips, args.seed)
        for reader in readers.values():
            reader(*requests[0])  # warm-up
        runs = dict(zip(readers, zip(*[rates(list(readers.values()), requests) for _ in range(args.repeats)])))
        print(f"\n{'decoder':<44} {'clips/s per core':>22} {'same frames':>12} {'mean |diff|':>12} {'max':>5}")
        check = requests[:args.check_clips]
        for name, values in runs.items():
            aligned, mean, worst = (True, 0.0, 0) if name == "decord" else agreement(readers[name], decord_frames,
                                                                                        check)
            print(f"{name:<44} {np.median(values):>8.1f} [{min(values):.1f}-{max(values):.1f}]"
                  f"{'':>3} {aligned!s:>12} {mean:>12.2f} {worst:>5}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
