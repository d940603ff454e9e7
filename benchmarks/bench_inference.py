"""run_inference.py on the CPU: frames/s of decoding, face detection, cropping and prediction, and the detectors.

Makes a 640x360, 25 fps video of the portrait matplotlib ships (moving, zooming, re-lit: demo_data.make_face_video),
saves a full-size model with random weights in our checkpoint format, and times `engine_inference.process_video` by
stage for each sampling rate (1 = FERV39k's, 4 = DFEW's / MAFW's) in float32 and with bf16 autocast. "video
frames/s" is the video's frame count over the stage's seconds, so that the stages add up like rates (1 / total =
sum of 1 / stage); "CPU s" is the process's CPU time, steadier than wall time on a machine shared with other jobs.

The choice of the face detector is settled (benchmarks/results/SETTLED.md).

    python benchmarks/bench_inference.py                      # 30 s video, rates 1 and 4, MAE-DFER; a few minutes
    python benchmarks/bench_inference.py --seconds 10 --fusion add --amps bf16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (first: puts the repository on the path)
import cv2
import torch

import checkpoint as ckpt
import run_class_finetuning as rcf
import run_inference as ri
import utils
from demo_data import make_face_video
from engine_inference import process_video


def full_size_checkpoint(folder: Path, fusion: str, sampling_rate: int) -> Path:
    """The released scripts' model (MAE-DFER `scripts/dfew/`), random weights, saved as our fine-tuning saves."""
    args = rcf.get_args_parser().parse_args([
        "--model", "vit_base_dim512_no_depth_patch16_160", "--depth", "16", "--input_size", "160", "--nb_classes",
        "7", "--data_set", "DFEW", "--lg_region_size", "2", "5", "10", "--lg_classify_token_type", "region",
        "--fusion", fusion, "--sampling_rate", str(sampling_rate), "--output_dir", str(folder)])
    model = rcf.create_model(args)
    return ckpt.save_model(args.output_dir, sampling_rate, model=model,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1), args=args)


def time_pipeline(video: Path, folder: Path, args: argparse.Namespace):
    """One row per (sampling rate, amp): stage seconds (wall), total wall and CPU seconds of the process."""
    for rate in args.sampling_rates:
        checkpoint = full_size_checkpoint(folder, args.fusion, rate)
        for amp in args.amps:
            inference = ri.get_args_parser().parse_args(["--checkpoint", str(checkpoint), "--video", str(video),
                                                         "--device", "cpu", "--amp", amp,
                                                         "--batch_size", str(args.batch_size)])
            model, cfg, _ = ri.load_model(inference, torch.device("cpu"))
            start, cpu = time.perf_counter(), time.process_time()
            result = process_video(video, model, cfg, inference, torch.device("cpu"))
            yield dict(rate=rate, amp=amp, frames=result["frames"], examined=len(result["examined"]),
                       windows=len(result["windows"]), total=time.perf_counter() - start,
                       cpu=time.process_time() - cpu, **result["seconds"])


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
        folder = Path(tmp)
        video = folder / "talk.mp4"
        make_face_video(video, seconds=args.seconds, size=(640, 360))
        print(f"{args.seconds:g} s video, 640x360 at 25 fps; model vit_base_dim512 depth 16 (fusion {args.fusion}), "
              f"input 160, 16 frames, CPU {args.threads} threads, batch {args.batch_size}\n")
        print("| sampling rate | amp | frames examined | windows | decode | detect | crop | predict | total "
              "| video frames/s | CPU s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in time_pipeline(video, folder, args):
            stages = " | ".join(f"{r[k]:.1f} s ({r['frames'] / r[k]:.0f} f/s)" for k in
                                ("decode", "detect", "crop", "predict"))
            print(f"| {r['rate']} | {r['amp']} | {r['examined']} | {r['windows']} | {stages} | {r['total']:.1f} s "
                  f"| {r['frames'] / r['total']:.1f} | {r['cpu']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
