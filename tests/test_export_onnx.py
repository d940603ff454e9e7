"""export_onnx.py: every fusion exports with a dynamic batch axis and ONNX Runtime's logits match PyTorch's; the
exported file runs run_inference.py's --backend onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import checkpoint as ckpt
import export_onnx
import run_class_finetuning as rcf
import run_inference as ri
from annotations import DATASETS
from demo_data import make_face_video
from models import create_model


def tiny_checkpoint(folder, fusion: str):
    """A checkpoint in our fine-tuning's format: the --demo configuration at 32 px, one block, 8 frames."""
    parser = rcf.get_args_parser()
    parser.set_defaults(**rcf.DEMO_DEFAULTS)
    args = parser.parse_args(["--output_dir", str(folder), "--input_size", "32", "--depth", "1", "--num_frames", "8",
                              "--lg_region_size", "2", "1", "2", "--fusion", fusion, "--device", "cpu"])
    folder.mkdir()
    torch.manual_seed(0)
    model = create_model(args)
    with torch.no_grad():  # a head far from zero, so that logits differ between clips
        model.head.weight.normal_(0, 0.5)
    return ckpt.save_model(args.output_dir, 0, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           args=args), model.eval()


def export(checkpoint, out, *extra: str) -> dict:
    return export_onnx.main(export_onnx.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--out", str(out), *extra]))


def export_tiny(folder, fusion: str):
    """(checkpoint, PyTorch model, ONNX path, export_onnx.main's result) of a tiny model with this fusion."""
    checkpoint, model = tiny_checkpoint(folder / "ckpt", fusion)
    return checkpoint, model, folder / "model.onnx", export(checkpoint, folder / "model.onnx")


@pytest.fixture(scope="module")
def exported_add(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("add"), "add")


@pytest.mark.parametrize("fusion", ["add", pytest.param("none", marks=pytest.mark.slow),
                                    pytest.param("cat", marks=pytest.mark.slow),
                                    pytest.param("pos", marks=pytest.mark.slow)])
def test_every_fusion_exports_and_matches_pytorch(fusion, tmp_path, request):
    _, model, path, result = request.getfixturevalue("exported_add") if fusion == "add" else \
        export_tiny(tmp_path, fusion)
    assert result["max_abs_diff"] <= 1e-4 and result["identity"]["fusion"] == fusion
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    (clip_input,) = proto.graph.input
    assert clip_input.name == "clip" and [o.name for o in proto.graph.output] == ["logits"]
    dims = clip_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 8, 32, 32]
    identity = json.loads({p.key: p.value for p in proto.metadata_props}[export_onnx.METADATA_KEY])
    assert identity["num_frames"] == 8 and identity["classes"] == list(DATASETS["DEMO"].classes)
    # An independent clip at a batch size the export never saw.
    clip = torch.randn(5, 3, 8, 32, 32, generator=torch.Generator().manual_seed(7))
    runtime = export_onnx.OnnxModel(path)
    with torch.no_grad():
        expected = model(clip)
    logits = runtime(clip)
    assert logits.shape == (5, 5) and (logits - expected).abs().max() <= 1e-4
    assert (expected.std(dim=0) > 1e-3).all(), "the clips' logits should differ, for the comparison to mean much"


def test_onnxruntime_backend_gives_the_pytorch_timeline(exported_add, tmp_path):
    checkpoint, _, path, _ = exported_add
    video = tmp_path / "portrait.mp4"
    make_face_video(video, seconds=1.2, size=(256, 144))
    common = ["--video", str(video), "--min_face_frames", "1"]
    (eager,) = ri.main(ri.get_args_parser().parse_args(["--checkpoint", str(checkpoint), "--out",
                                                        str(tmp_path / "eager"), *common]))
    (onnx_run,) = ri.main(ri.get_args_parser().parse_args(["--backend", "onnxruntime", "--onnx", str(path),
                                                           "--out",
                                                           str(tmp_path / "ort"), *common]))
    assert np.allclose(onnx_run["probs"], eager["probs"], atol=1e-5)
    summary = json.loads((tmp_path / "ort" / "portrait" / "summary.json").read_text())
    assert summary["model"]["backend"] == "onnxruntime" and summary["model"]["fusion"] == "add"
    with pytest.raises(ckpt.CheckpointError, match="--num_frames 16 does not match the exported model, which has "
                                                    "num_frames 8"):
        ri.main(ri.get_args_parser().parse_args(["--backend", "onnxruntime", "--onnx", str(path),
                                                 "--num_frames", "16", *common]))
    with pytest.raises(ValueError, match="needs --onnx FILE"):
        ri.main(ri.get_args_parser().parse_args(["--backend", "onnxruntime", *common]))
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx: no such ONNX file"):
        ri.main(ri.get_args_parser().parse_args(["--backend", "onnxruntime", "--onnx", str(tmp_path / "missing.onnx"),
                                                 *common]))
