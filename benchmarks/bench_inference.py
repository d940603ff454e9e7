"""run_inference.py on the CPU: frames/s of decoding, face detection, cropping and prediction.

A 640x360, 25 fps video of the portrait matplotlib ships (moving, zooming, re-lit: demo_data.make_face_video) and the
full-size model with random weights; `engine_inference.process_video` timed by stage for each sampling rate (1 =
FERV39k's, 4 = DFEW's / MAFW's) in float32 and with bf16 autocast. A stage's frames/s is the video's frame count over
its seconds, so that stages add up like rates; "cpu_s" is the process's CPU time, steadier than wall time on a
shared machine.

    python benchmarks/bench_inference.py                      # 30 s video, rates 1 and 4, MAE-DFER; a few minutes
    python benchmarks/bench_inference.py --seconds 10 --fusion add --amps bf16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch
from common import full_size_checkpoint, report

import run_inference as ri
import utils
from demo_data import make_face_video
from engine_inference import process_video


def pipeline_rows(video: Path, folder: Path, args: argparse.Namespace):
    """One row per (sampling rate, amp): frames/s of each stage and in all, and the process's CPU seconds."""
    for rate in args.sampling_rates:
        checkpoint = full_size_checkpoint(folder, args.fusion, rate)
        for amp in args.amps:
            inference = ri.get_args_parser().parse_args(["--checkpoint", str(checkpoint), "--video", str(video),
                                                         "--device", "cpu", "--amp", amp,
                                                         "--batch_size", str(args.batch_size)])
            model, cfg, _ = ri.load_model(inference, torch.device("cpu"))
            start, cpu = time.perf_counter(), time.process_time()
            result = process_video(video, model, cfg, inference, torch.device("cpu"))
            total, frames = time.perf_counter() - start, result["frames"]
            yield dict(sampling_rate=rate, amp=amp, examined=len(result["examined"]), windows=len(result["windows"]),
                       **{f"{stage} f/s": round(frames / result["seconds"][stage], 1)
                          for stage in ("decode", "detect", "crop", "predict")},
                       **{"total f/s": round(frames / total, 1), "cpu_s": round(time.process_time() - cpu, 1)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--sampling_rates", type=int, nargs="+", default=[1, 4])
    p.add_argument("--fusion", default="none", choices=["none", "add", "cat", "pos"])
    p.add_argument("--amps", nargs="+", default=["none", "bf16"], choices=["none", "bf16"])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    utils.keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "talk.mp4"
        make_face_video(video, seconds=args.seconds, size=(640, 360))
        rows = list(pipeline_rows(video, Path(tmp), args))
    report("inference", rows, video=f"{args.seconds:g} s, 640x360, 25 fps", fusion=args.fusion,
           threads=args.threads, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
