"""ONNX Runtime against eager PyTorch on the CPU: export time, largest logit difference and seconds per batch.

The full-size MAE-DFER and MAE-DFER-CA (fusion add), random weights in our checkpoint format, exported by
export_onnx.py; at each batch size eager PyTorch and ONNX Runtime take turns on the same clip (--threads threads
each): seconds per call, median [min-max] of --repeats after one warm-up. The results file is rewritten after every
row, so a long run that is stopped keeps what it measured.

    python benchmarks/bench_onnx.py                                  # both models, batch 1 and 8: long on 2 cores
    python benchmarks/bench_onnx.py --fusions add --batch_sizes 1 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import full_size_checkpoint, report, spread, take_turns, write_result

import checkpoint as ckpt
import export_onnx
from models import FULL_SIZE, create_model


def onnx_rows(fusion: str, batch_sizes: list[int], repeats: int, threads: int, folder: Path):
    """Per batch size: eager PyTorch and ONNX Runtime taking turns, with the export's seconds and logit difference."""
    checkpoint = full_size_checkpoint(folder / fusion, fusion)
    out = folder / f"{fusion}.onnx"
    exported = export_onnx.main(export_onnx.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--out", str(out)]))
    model = create_model(argparse.Namespace(**vars(ckpt.load_checkpoint(checkpoint)["args"])))
    ckpt.load_model_weights(model, checkpoint)
    runners = {"pytorch eager": model.eval(), "onnxruntime": export_onnx.OnnxModel(out, threads)}
    frames, size = FULL_SIZE["num_frames"], FULL_SIZE["input_size"]
    for batch in batch_sizes:
        clip = torch.randn(batch, 3, frames, size, size)
        with torch.no_grad():
            seconds = take_turns({name: lambda run=run, clip=clip: run(clip) for name, run in runners.items()}, repeats)
        yield dict(fusion=fusion, batch=batch, export_s=exported["seconds"], max_abs_diff=exported["max_abs_diff"],
                   **{f"{name} s": spread(s, 2) for name, s in seconds.items()},
                   speedup=round(spread(seconds["pytorch eager"])["median"] / spread(seconds["onnxruntime"])["median"],
                                 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fusions", nargs="+", default=["none", "add"], choices=["none", "add", "cat", "pos"],
                   help="none: MAE-DFER; add: MAE-DFER-CA")
    p.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8], help="clips per call")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per backend and batch size")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both backends")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fusion in args.fusions:
            for row in onnx_rows(fusion, args.batch_sizes, args.repeats, args.threads, Path(tmp)):
                rows.append(row)
                write_result("onnx", rows, threads=args.threads, torch=torch.__version__)
                print(row, flush=True)
    report("onnx", rows, threads=args.threads, torch=torch.__version__)


if __name__ == "__main__":
    main()
