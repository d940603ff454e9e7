"""Predict facial expressions over time in your own videos with a fine-tuned MAE-DFER / MAE-DFER-CA checkpoint.

For every video (`engine_inference.process_video`): detect the faces (`faces.py`), keep the main one, smooth its box,
crop it as the datasets' face frames are cropped, slide a window of num_frames frames at the checkpoint's sampling
rate over the video, predict class probabilities per window and average them into a clip-level prediction. Writes,
per video, timeline.csv, summary.json, timeline.png and with --render an annotated mp4 (`timeline.py`). This script
parses, builds the model from the checkpoint and loops over the videos.

    python run_inference.py --checkpoint CKPT --video talk.mp4 --out saved/inference
    python run_inference.py --demo      # a video made from the portrait matplotlib ships, and the demo checkpoint
    python run_inference.py --backend onnxruntime --onnx model.onnx --video talk.mp4   # export_onnx.py's file
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import asdict
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

import checkpoint as ckpt
import faces
import timeline
import utils
from annotations import DATASETS
from engine_inference import VideoError, process_video
from modeling_finetune import LGConfig, infer_fusion
from models import FULL_SIZE, create_model
from video_io import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

# The model-defining flags: taken from the checkpoint's stored arguments; given on the command line they must agree.
MODEL_FLAGS = ("model", "nb_classes", "data_set", "fusion", "depth", "input_size", "num_frames", "sampling_rate",
               "tubelet_size", "attn_type", "lg_region_size", "lg_classify_token_type")
# The rest of what models.create_model reads, for a model that is only evaluated (dropout off; weights from the file).
EVAL_MODEL_DEFAULTS = dict(data_set=None, nb_classes=None, sampling_rate=None, fusion="none", tubelet_size=2,
                           num_segments=1, drop=0.0, drop_path=0.0, attn_drop_rate=0.0, use_mean_pooling=True,
                           init_scale=0.0, **asdict(LGConfig()))
DEMO_VIDEO = Path("saved/data/demo_video/portrait.mp4")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MAE-DFER: expression timeline of videos", add_help=True)
    add = p.add_argument_group("input and output").add_argument
    add("--checkpoint", default=None, help="fine-tuned checkpoint (ours or the original authors')")
    add("--video", action="append", default=[], help="an input video; may be repeated")
    add("--video_dir", default=None, help="every video file in this folder")
    add("--out", default="saved/inference", help="outputs go to OUT/<video name>/")
    add_model_flags(p)
    add("--backend", default="pytorch", choices=["pytorch", "onnxruntime"],
        help="onnxruntime: run the model exported by export_onnx.py (--onnx), float32 on the CPU, instead of "
        "--checkpoint")
    add("--onnx", default=None, help="the ONNX file export_onnx.py wrote (--backend onnxruntime); the model's "
        "configuration is read from its metadata")
    add = p.add_argument_group("windows and prediction").add_argument
    add("--stride", default=None, type=int, help="frames between window starts (default: half a window, "
        "rounded to a multiple of the sampling rate)")
    add("--batch_size", default=8, type=int, help="windows per forward pass")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    add("--amp", default=None, choices=["none", "fp16", "bf16"],
        help="default: bf16 on CUDA (else fp16), none (float32) on the CPU")
    faces_group = p.add_argument_group("faces")
    faces.add_face_arguments(faces_group)
    add = faces_group.add_argument
    add("--min_face_frames", default=None, type=int, help="predict a window only if this many of its frames "
        "had a face (default: half)")
    add = p.add_argument_group("output and demo").add_argument
    add("--render", action="store_true", help="also write an annotated mp4")
    add("--demo", action="store_true", help="make the demo video and use the demo checkpoint (trained if missing)")
    return p


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model-defining flags (MODEL_FLAGS): taken from the checkpoint's stored arguments where present, else from
    these flags and the released scripts' configuration."""
    add = p.add_argument_group("model", "read from the checkpoint where it stores them (a flag that contradicts it "
                               "is an error), else these").add_argument
    add("--model", default=None, help=f"timm name of the model (default: {FULL_SIZE['model']})")
    add("--nb_classes", default=None, type=int, help="number of classes (default: those of --data_set)")
    add("--data_set", default=None, choices=list(DATASETS), help="names the classes")
    add("--fusion", default=None, choices=["none", "add", "cat", "pos"],
        help="CA branch fusion (default: read off the weights)")
    add("--depth", default=None, type=int, help=f"encoder blocks (default: {FULL_SIZE['depth']})")
    add("--input_size", default=None, type=int, help=f"frame side in pixels (default: {FULL_SIZE['input_size']})")
    add("--num_frames", default=None, type=int, help=f"frames per clip (default: {FULL_SIZE['num_frames']})")
    add("--sampling_rate", default=None, type=int, help="default: 1 for FERV39k, 4 otherwise (the scripts')")
    add("--tubelet_size", default=None, type=int, help="frames per patch (default: 2)")
    add("--attn_type", default=None, choices=["joint", "local_global"], help="default: local_global")
    add("--lg_region_size", default=None, type=int, nargs="+", help="LGI-Former region size t h w (default: 2 5 10)")
    add("--lg_classify_token_type", default=None, choices=["org", "region", "all"], help="default: region")


def model_config(args: argparse.Namespace, checkpoint: dict) -> argparse.Namespace:
    """Fine-tuning arguments for `models.create_model`: the checkpoint's stored ones, else the flags and the scripts'
    configuration (FULL_SIZE); a flag that contradicts the checkpoint is an error."""
    stored = checkpoint.get("args") if isinstance(checkpoint.get("args"), argparse.Namespace) else None
    cfg = argparse.Namespace(**{**EVAL_MODEL_DEFAULTS, **FULL_SIZE, **vars(stored or argparse.Namespace())})
    if stored is None or getattr(stored, "fusion", None) is None:
        cfg.fusion = infer_fusion(ckpt.select_state_dict(checkpoint))
    for name in MODEL_FLAGS:
        given = getattr(args, name)
        if given is None:
            continue
        if stored is not None and name in vars(stored) and _same(getattr(stored, name)) != _same(given):
            raise ckpt.CheckpointError(f"{args.checkpoint}: --{name} {given} does not match the checkpoint, which "
                                        f"was trained with {name} {getattr(stored, name)}")
        setattr(cfg, name, given)
    if cfg.data_set not in DATASETS:
        raise ValueError(f"{args.checkpoint}: unknown class list {cfg.data_set!r}: pass --data_set "
                         f"({', '.join(DATASETS)})")
    classes = DATASETS[cfg.data_set].classes
    if stored is None and args.nb_classes is None:
        cfg.nb_classes = len(classes)
    if stored is None and args.sampling_rate is None:
        cfg.sampling_rate = 1 if cfg.data_set == "FERV39k" else 4
    if cfg.nb_classes != len(classes):
        raise ckpt.CheckpointError(f"{args.checkpoint}: {cfg.nb_classes} classes, but {cfg.data_set} has "
                                    f"{len(classes)} ({', '.join(classes)})")
    cfg.num_segments, cfg.drop_path = 1, 0.0
    return cfg


def _same(value):
    return list(value) if isinstance(value, tuple | list) else value


def load_model(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, argparse.Namespace, dict]:
    """The model with the checkpoint's weights (strict), its configuration and its identity for summary.json."""
    checkpoint = ckpt.load_checkpoint(args.checkpoint)
    cfg = model_config(args, checkpoint)
    model = create_model(cfg)
    ckpt.load_model_weights(model, args.checkpoint)
    digest = hashlib.sha256()
    with open(args.checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    identity = dict(checkpoint=str(args.checkpoint), sha256=digest.hexdigest(), epoch=checkpoint.get("epoch"),
                    **{k: _same(getattr(cfg, k)) for k in MODEL_FLAGS},
                    classes=list(DATASETS[cfg.data_set].classes),
                    parameters=sum(p.numel() for p in model.parameters()))
    return model.to(device).eval(), cfg, identity


def load_onnx_model(args: argparse.Namespace) -> tuple[object, argparse.Namespace, dict]:
    """--backend onnxruntime: the exported model, its configuration and identity from the file's metadata; a model
    flag given on the command line must agree with them."""
    from export_onnx import OnnxModel

    if args.onnx is None:
        raise ValueError("--backend onnxruntime needs --onnx FILE (written by export_onnx.py)")
    model = OnnxModel(args.onnx)
    if model.identity is None:
        raise ckpt.CheckpointError(f"{args.onnx}: no MAE-DFER metadata in the file: export it with export_onnx.py")
    for name in MODEL_FLAGS:
        given = getattr(args, name)
        if given is not None and _same(given) != model.identity[name]:
            raise ckpt.CheckpointError(f"{args.onnx}: --{name} {given} does not match the exported model, which has "
                                        f"{name} {model.identity[name]}")
    cfg = argparse.Namespace(**{name: model.identity[name] for name in MODEL_FLAGS})
    return model, cfg, {**model.identity, "backend": "onnxruntime", "onnx": str(args.onnx)}


def list_videos(args: argparse.Namespace) -> list[Path]:
    videos = [Path(v) for v in args.video]
    if args.video_dir:
        folder = Path(args.video_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder (--video_dir)")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
        if not found:
            raise FileNotFoundError(f"{folder}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
        videos += found
    if not videos:
        raise ValueError("no input: pass --video FILE (repeatable) or --video_dir FOLDER")
    return videos


def prepare_demo(args: argparse.Namespace) -> None:
    """--demo: the portrait video (made once) and the demo fine-tuning's checkpoint (trained if there is none)."""
    from demo_data import make_face_video

    if not args.video and not args.video_dir:
        if not DEMO_VIDEO.is_file():
            DEMO_VIDEO.parent.mkdir(parents=True, exist_ok=True)
            make_face_video(DEMO_VIDEO, seconds=8.0, face_height=0.3)
        args.video = [str(DEMO_VIDEO)]
    if args.checkpoint is None:
        import run_class_finetuning as rcf  # the demo fine-tuning, run once when its checkpoint is missing

        demo_dir = Path(rcf.DEMO_DEFAULTS["output_dir"])
        latest = ckpt.latest_checkpoint(demo_dir) if demo_dir.is_dir() else None
        if latest is None:
            logger.info("no demo checkpoint in %s: running the demo fine-tuning first", demo_dir)
            parser = rcf.get_args_parser()
            parser.set_defaults(**rcf.DEMO_DEFAULTS)
            rcf.main(parser.parse_args([]))
            latest = ckpt.latest_checkpoint(demo_dir)
        args.checkpoint = str(latest)
    args.out = args.out if args.out != "saved/inference" else "saved/inference/demo"
    args.render = True


def main(args: argparse.Namespace) -> list[dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # datasets.py turns OpenCV's threads off for DataLoader workers; here there are none, and the cascade's scales
    # run in parallel.
    cv2.setNumThreads(torch.get_num_threads())
    if args.demo:
        prepare_demo(args)
    if args.backend == "onnxruntime" and args.amp not in (None, "none"):
        raise ValueError("--backend onnxruntime runs the exported float32 model: --amp does not apply")
    if args.backend == "pytorch" and args.checkpoint is None:
        raise ValueError("--checkpoint is required (or --demo, or --backend onnxruntime --onnx FILE)")
    videos = list_videos(args)
    device = torch.device("cpu" if args.backend == "onnxruntime" else args.device)
    if args.amp is None:
        args.amp = utils.default_amp(device)  # float32 on the CPU (bf16 was not reliably faster there)
    model, cfg, identity = load_onnx_model(args) if args.backend == "onnxruntime" else load_model(args, device)
    logger.info("model %s (fusion %s, %s: %d classes), %d frames every %d, input %d px", cfg.model, cfg.fusion,
                cfg.data_set, cfg.nb_classes, cfg.num_frames, cfg.sampling_rate, cfg.input_size)
    results, failures = [], []
    names: set[str] = set()
    for video in tqdm(videos, desc="videos", disable=len(videos) == 1, dynamic_ncols=True):
        name = video.stem
        while name in names:
            name += "_"
        names.add(name)
        try:
            result = process_video(video, model, cfg, args, device)
        except (OSError, VideoError) as err:
            if len(videos) == 1:
                raise
            logger.error("%s", err)
            failures.append(str(err))
            continue
        result["summary"] = timeline.write_outputs(result, Path(args.out) / name, identity, args.render)
        logger.info(timeline.describe(result["summary"], Path(args.out) / name))
        results.append(result)
    if failures:
        raise VideoError(f"{len(failures)} of {len(videos)} videos failed:\n  " + "\n  ".join(failures))
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
