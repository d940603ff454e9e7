"""ONNX Runtime against eager PyTorch on the CPU: export time, largest logit difference and seconds per batch.

Full-size MAE-DFER and MAE-DFER-CA (fusion add), random weights in our checkpoint format, exported by export_onnx.py;
then, at each batch size, eager PyTorch and ONNX Runtime take turns on the same normalised clip (both with
--threads threads), and each timing is the median [min-max] of --repeats runs after one warm-up.

    python benchmarks/bench_onnx.py                                  # both models, batch 1 and 8: long on 2 cores
    python benchmarks/bench_onnx.py --fusions add --batch_sizes 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, machine  # the repository root is on the path from here on

import checkpoint as ckpt
import export_onnx
import run_class_finetuning as rcf
from models import create_model


def spread(seconds: list[float]) -> dict:
    return dict(median=statistics.median(seconds), min=min(seconds), max=max(seconds), runs=len(seconds))


def full_size_checkpoint(folder: Path, fusion: str) -> Path:
    """The released scripts' DFEW model (depth 16, 16 x 160 x 160), random weights, saved as our fine-tuning saves."""
    args = rcf.get_args_parser().parse_args([
        "--model", "vit_base_dim512_no_depth_patch16_160", "--depth", "16", "--input_size", "160", "--nb_classes",
        "7", "--data_set", "DFEW", "--lg_region_size", "2", "5", "10", "--fusion", fusion, "--output_dir", str(folder)])
    model = create_model(args)
    folder.mkdir(parents=True)
    return ckpt.save_model(folder, 0, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), args=args)


def take_turns(runners: dict, clip: torch.Tensor, repeats: int) -> dict:
    """Seconds per call of each runner, alternating between them, after one warm-up call each."""
    times = {name: [] for name in runners}
    with torch.no_grad():
        for run in runners.values():
            run(clip)
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run(clip)
                times[name].append(time.perf_counter() - start)
    return {name: spread(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fusions", nargs="+", default=["none", "add"], choices=["none", "add", "cat", "pos"],
                   help="none: MAE-DFER; add: MAE-DFER-CA")
    p.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8], help="clips per call")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per backend and batch size")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both backends")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    now = datetime.now(timezone.utc)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{now:%Y-%m-%d}-{platform.node() or 'machine'}-onnx.json"
    results = dict(date=now.isoformat(timespec="seconds"), machine=machine(), load_average=os.getloadavg(),
                   command=" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), threads=args.threads,
                   torch=torch.__version__, rows=[])
    with tempfile.TemporaryDirectory() as tmp:
        for fusion in args.fusions:
            checkpoint = full_size_checkpoint(Path(tmp) / fusion, fusion)
            out = Path(tmp) / f"{fusion}.onnx"
            exported = export_onnx.main(export_onnx.get_args_parser().parse_args(
                ["--checkpoint", str(checkpoint), "--out", str(out)]))
            model = create_model(argparse.Namespace(**vars(ckpt.load_checkpoint(checkpoint)["args"])))
            ckpt.load_model_weights(model, checkpoint)
            runners = {"pytorch eager": model.eval(), "onnxruntime": export_onnx.OnnxModel(out, args.threads)}
            for batch in args.batch_sizes:
                clip = torch.randn(batch, 3, 16, 160, 160)
                timed = take_turns(runners, clip, args.repeats)
                speedup = timed["pytorch eager"]["median"] / timed["onnxruntime"]["median"]
                results["rows"].append(dict(fusion=fusion, batch=batch, export_s=exported["seconds"],
                                            max_abs_diff=exported["max_abs_diff"], seconds_per_call=timed,
                                            speedup=speedup, load_average=os.getloadavg()))
                path.write_text(json.dumps(results, indent=1) + "\n")  # after every row: a long run keeps its rows
                print(f"fusion {fusion:4s} batch {batch}: eager {timed['pytorch eager']['median']:.2f} s "
                      f"[{timed['pytorch eager']['min']:.2f}-{timed['pytorch eager']['max']:.2f}], onnxruntime "
                      f"{timed['onnxruntime']['median']:.2f} s [{timed['onnxruntime']['min']:.2f}-"
                      f"{timed['onnxruntime']['max']:.2f}]: {speedup:.2f}x; export {exported['seconds']:.0f} s, "
                      f"max |diff| {exported['max_abs_diff']:.1e}", flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
