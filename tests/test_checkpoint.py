"""Checkpoint reading: allow-list, original formats, pretrain -> fine-tune mapping, strict loading errors."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import timm
import torch
from support.configs import SCRIPT_KWARGS, random_state_dict, read_keys

import checkpoint as ckpt
import modeling_finetune  # noqa: F401  (registers the models)
from checkpoint import CheckpointError, load_checkpoint, load_model_weights, load_pretrained


def build(depth: int = 2, **overrides):
    return timm.create_model("vit_base_dim512_no_depth_patch16_160", **{**SCRIPT_KWARGS, "depth": depth, **overrides})


class Payload:
    """Unpickling this creates a marker file: a stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_original_training_checkpoint_with_namespace_optimizer_and_scaler_loads(tmp_path):
    model = build(depth=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 16, 160, 160)).sum().backward()
    optimizer.step()
    for group in optimizer.param_groups:  # the originals set learning rates from a numpy schedule
        group["lr"] = np.float64(1e-4)
    args = argparse.Namespace(model="vit_base_dim512_no_depth_patch16_160", nb_classes=7, lg_region_size=[2, 5, 10],
                              window_size=(8, 10, 10), finetune="", lr=1e-3, device="cuda")
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 0}
    path = tmp_path / "checkpoint-99.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 99, "scaler": scaler,
                "args": args}, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint["args"].lg_region_size == [2, 5, 10] and checkpoint["epoch"] == 99
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == np.float64(1e-4)
    fresh = build(depth=1)
    load_model_weights(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_wrong_class_count_or_fusion_lists_the_mismatched_keys(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": build(depth=1, num_classes=11).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"shape: head.weight checkpoint \[11, 512\], model \[7, 512\]"):
        load_model_weights(build(depth=1), path)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: cablock\.\* \(98 tensors\)") as err:
        load_model_weights(build(depth=1, num_classes=11, fusion="add"), path)
    assert "missing from the checkpoint: fc1.weight [512, 51200]" in str(err.value)


def test_unreadable_or_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    torn = tmp_path / "torn.pth"
    torch.save({"model": build(depth=1).state_dict()}, tmp_path / "full.pth")
    torn.write_bytes((tmp_path / "full.pth").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"torn\.pth"):
        load_checkpoint(torn)


@pytest.mark.parametrize("fusion", [None, "add"])
def test_pretraining_checkpoint_initialises_the_fine_tune_model(tmp_path, fusion):
    pretrained = random_state_dict(read_keys("keys_maedfer_pt_base.txt", depth=2))
    path = tmp_path / "checkpoint-49.pth"
    torch.save({"model": pretrained, "epoch": 49, "args": argparse.Namespace(model="pretrain")}, path)
    model = build(depth=2, fusion=fusion)
    report = load_pretrained(model, path)

    # BatchNorm counters absent from a checkpoint are filled by BatchNorm itself, unreported, as in the original.
    ca = [k for k in model.state_dict()
          if k.split(".")[0] in ("cablock", "conv_act", "fc1") and not k.endswith("num_batches_tracked")]
    assert sorted(report.missing) == sorted(["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias", *ca])
    assert "mask_token" in report.unexpected and "encoder_to_decoder.weight" in report.unexpected
    assert {"norm.weight", "norm.bias"} <= set(report.unexpected)  # the pretrained encoder's final LN is dropped
    assert all(k.startswith("decoder.") for k in report.unexpected
               if k not in ("mask_token", "encoder_to_decoder.weight", "norm.weight", "norm.bias"))
    assert report.mismatched == []
    state = model.state_dict()
    for key in ("lg_region_tokens", "patch_embed.proj.weight", "blocks.1.third_attn.kv.weight",
                "blocks.0.mlp.fc2.bias"):
        assert torch.equal(state[key], pretrained["encoder." + key]), key


def test_region_tokens_of_another_count_are_skipped_and_reported(tmp_path):
    pretrained = random_state_dict(read_keys("keys_maedfer_pt_base.txt", depth=1))
    path = tmp_path / "pt.pth"
    torch.save({"model": pretrained}, path)
    model = build(depth=1, lg_region_size=[4, 5, 10])
    before = model.lg_region_tokens.detach().clone()
    report = load_pretrained(model, path)
    assert report.mismatched == ["lg_region_tokens: checkpoint [8, 512], model [4, 512]"]
    assert torch.equal(model.lg_region_tokens, before)
    assert torch.equal(model.blocks[0].first_attn.q.weight, pretrained["encoder.blocks.0.first_attn.q.weight"])


def test_fine_tuned_checkpoint_with_other_head_keeps_the_new_head(tmp_path):
    source = build(depth=1, num_classes=11)
    path = tmp_path / "mafw.pth"
    torch.save({"module": source.state_dict()}, path)
    model = build(depth=1)
    report = load_pretrained(model, path)
    assert report.missing == ["head.weight", "head.bias"]
    assert torch.equal(model.fc_norm.weight, source.fc_norm.weight)


# --- training checkpoints and resume -------------------------------------------------------------------------------

def training_state(tmp_path):
    """A tiny model and optimizer, and args for ckpt.save_model."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    args = argparse.Namespace(output_dir=str(tmp_path), resume="", auto_resume=True, eval=False, start_epoch=0)
    return model, optimizer, args


def test_checkpoint_last_keep_last_and_best(tmp_path):
    model, optimizer, args = training_state(tmp_path)
    for epoch in range(4):
        ckpt.save_model(args.output_dir, epoch, model=model, optimizer=optimizer, args=args, keep_last=2)
    ckpt.save_model(args.output_dir, "best", model=model, optimizer=optimizer, args=args, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-2.pth", "checkpoint-3.pth", "checkpoint-best.pth", "checkpoint-last.pth"]
    assert (tmp_path / "checkpoint-last.pth").samefile(tmp_path / "checkpoint-3.pth")
    ckpt.save_model(args.output_dir, 4, model=model, optimizer=optimizer, args=args, step=7, numbered=False,
                    extra={"note": 1})
    last = load_checkpoint(tmp_path / "checkpoint-last.pth")
    assert (last["epoch"], last["step"], last["note"]) == (4, 7, 1)
    assert load_checkpoint(tmp_path / "checkpoint-3.pth")["step"] is None  # the link was replaced, not written through
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-last.pth"


def test_auto_resume_skips_a_torn_checkpoint_with_a_warning(tmp_path, caplog):
    model, optimizer, args = training_state(tmp_path)
    ckpt.save_model(args.output_dir, 0, model=model, optimizer=optimizer, args=args)
    ckpt.save_model(args.output_dir, 1, model=model, optimizer=optimizer, args=args, step=3, numbered=False)
    (tmp_path / "checkpoint-last.pth").unlink()  # a new inode: checkpoint-0.pth stays whole
    torn = (tmp_path / "checkpoint-0.pth").read_bytes()[:300]
    (tmp_path / "checkpoint-last.pth").write_bytes(torn)
    (tmp_path / "checkpoint-last.pth.tmp").write_bytes(torn)  # a write the kill interrupted
    restored = ckpt.restore(model, args.resume, args.output_dir, args.auto_resume, optimizer=optimizer)
    assert restored.checkpoint["epoch"] == 0
    assert restored.path == str(tmp_path / "checkpoint-0.pth") and (restored.start_epoch, restored.start_step) == (1, 0)
    assert "skipping an incomplete checkpoint" in caplog.text and "checkpoint-last.pth" in caplog.text

    ckpt.save_model(args.output_dir, 1, model=model, optimizer=optimizer, args=args, step=3, numbered=False)
    restored = ckpt.restore(model, args.resume, args.output_dir, args.auto_resume, optimizer=optimizer)
    assert (restored.start_epoch, restored.start_step) == (1, 3)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    model, optimizer, args = training_state(tmp_path)
    ckpt.save_model(args.output_dir, 0, model=model, optimizer=optimizer, args=args, numbered=False)
    before = (tmp_path / "checkpoint-last.pth").read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"No space left.*the previous checkpoint-last\.pth is intact"):
        ckpt.save_model(args.output_dir, 1, model=model, optimizer=optimizer, args=args, step=2, numbered=False)
    assert (tmp_path / "checkpoint-last.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.pth"]
