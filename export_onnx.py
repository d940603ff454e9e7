"""Export a fine-tuned MAE-DFER / MAE-DFER-CA checkpoint to ONNX, check it against PyTorch, and run it (OnnxModel).

    python export_onnx.py --checkpoint CKPT --out model.onnx
    python run_inference.py --backend onnxruntime --onnx model.onnx --video talk.mp4

The model is built as run_inference.py builds it (its model flags, the checkpoint's stored arguments first, the
fusion read off the weights) and exported by `torch.onnx.export(..., dynamo=True)`. Input `clip`: the normalised
clip (B, 3, T, H, W) float32 with a dynamic batch axis; output `logits` (B, K). The model's identity (its flags,
classes, the checkpoint's sha256) is stored in the file's metadata, so run_inference.py needs no checkpoint.
The file is written only after ONNX Runtime's logits matched PyTorch's within --tolerance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

import run_inference as ri

logger = logging.getLogger(__name__)
METADATA_KEY = "mae_dfer"  # the model's identity, JSON, in the ONNX file's metadata_props


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MAE-DFER: export a fine-tuned checkpoint to ONNX", add_help=True)
    add = p.add_argument
    add("--checkpoint", required=True, help="fine-tuned checkpoint (ours or the original authors')")
    add("--out", required=True, type=Path, help="the ONNX file to write")
    ri.add_model_flags(p)
    add("--opset", default=18, type=int, help="ONNX opset version")
    add("--tolerance", default=1e-4, type=float, help="largest |ONNX Runtime - PyTorch| logit difference accepted")
    return p


class OnnxModel:
    """An exported model run by ONNX Runtime on the CPU, called as the PyTorch model: clip tensor -> logits tensor."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise OSError(f"{path}: ONNX Runtime cannot load it: {str(err).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        stored = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.identity = json.loads(stored) if stored else None

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        clip = clip.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: clip})[0])


def export(model: torch.nn.Module, clip: torch.Tensor, path: Path, identity: dict, opset: int) -> None:
    """Write `model` traced on `clip` (dynamic batch axis) to `path`, with `identity` in its metadata."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(model, (clip,), dynamo=True, opset_version=opset, input_names=["clip"],
                                output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(identity)
    onnx.save(proto, str(path))


def check(model: torch.nn.Module, path: Path, clips: list[torch.Tensor], tolerance: float) -> float:
    """Largest |ONNX Runtime - PyTorch| logit over `clips` (batch sizes may differ); ValueError past tolerance."""
    runtime = OnnxModel(path)
    worst = 0.0
    with torch.no_grad():
        for clip in clips:
            worst = max(worst, float((runtime(clip) - model(clip)).abs().max()))
    if not worst <= tolerance:
        raise ValueError(f"{path}: ONNX Runtime's logits differ from PyTorch's by {worst:.3g} > {tolerance:g}")
    return worst


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # the exporter's own INFO lines are many
    logger.setLevel(logging.INFO)
    model, cfg, identity = ri.load_model(args, torch.device("cpu"))
    shape = (3, cfg.num_frames, cfg.input_size, cfg.input_size)
    gen = torch.Generator().manual_seed(0)
    clips = [torch.randn(b, *shape, generator=gen) for b in (2, 1, 3)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(f".{args.out.name}.partial")
    tick = time.perf_counter()
    try:
        export(model, clips[0], partial, identity, args.opset)
        seconds = time.perf_counter() - tick
        worst = check(model, partial, clips, args.tolerance)
        os.replace(partial, args.out)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("wrote %s (%.1f MB, exported in %.1f s): model %s, fusion %s, input (B, %s) float32 -> logits "
                "(B, %d); checked: ONNX Runtime's logits within %.2g of PyTorch's (<= %g) at batch 1, 2 and 3",
                args.out, args.out.stat().st_size / 1e6, seconds, cfg.model, cfg.fusion,
                ", ".join(map(str, shape)), cfg.nb_classes, worst, args.tolerance)
    return dict(path=str(args.out), seconds=seconds, max_abs_diff=worst, identity=identity)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
