"""The entry scripts' demos shrunk to seconds (32 px, depth 1, one epoch), and what the tests that run them check:
ranks in sync, no collective that NCCL would refuse, test probabilities that agree. Shared by the CPU tests and the
tests marked `gpu`."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

import checkpoint as ckpt
from demo_data import make_demo_dataset, make_demo_videos
from support.collective_guard import CollectiveDeviceError

TRAIN_CLIPS = 20  # demo_clips: 5 classes x 4


def demo_clips(folder: Path) -> Path:
    return make_demo_dataset(folder, train_per_class=4, test_per_class=2, num_frames=16, size=32, seed=3)


def demo_videos(folder: Path) -> Path:
    return make_demo_videos(folder, per_class=2, num_frames=16, size=32)


def finetune_flags(data: Path, out: Path, *extra: str, device: str = "cpu") -> list[str]:
    """The fine-tuning demo: one epoch, validation and the final test included."""
    return ["--demo", "--data_path", str(data), "--data_root", str(data), "--input_size", "32", "--short_side_size",
            "32", "--depth", "1", "--lg_region_size", "2", "1", "2", "--num_workers", "0", "--device", device,
            "--epochs", "1", "--warmup_epochs", "0", "--output_dir", str(out), "--no-disable_eval_during_finetuning",
            *extra]


def pretrain_flags(videos: Path, out: Path, *extra: str, device: str = "cpu") -> list[str]:
    return ["--demo", "--data_path", str(videos / "info_clean.csv"), "--data_root", str(videos),
            "--input_size", "32", "--lg_region_size", "2", "1", "2", "--part_win_size", "2", "1", "2",
            "--mask_ratio", "0.5", "--encoder_depth", "1", "--decoder_depth", "1", "--epochs", "1",
            "--warmup_epochs", "0", "--num_workers", "0", "--device", device, "--save_recon", "0",
            "--output_dir", str(out), *extra]


# The demos that the stop-and-resume tests interrupt: two epochs, and a step checkpoint after every step (whose
# appearance tells a test that training has started).
RESUMABLE = ("--epochs", "2", "--warmup_epochs", "1", "--save_every_steps", "1")


def resumable_finetune_flags(data: Path, out: Path) -> list[str]:
    """20 training clips in batches of 2, validation and a one-view final test."""
    return finetune_flags(data, out, *RESUMABLE, "--batch_size", "2", "--drop_path", "0.1", "--test_num_segment", "1",
                          "--test_num_crop", "1")


def resumable_pretrain_flags(videos: Path, out: Path) -> list[str]:
    return pretrain_flags(videos, out, *RESUMABLE, "--batch_size", "1")


def assert_ranks_in_sync(result, checkpoint: Path) -> None:
    """Every rank ends with the checkpoint's parameters, issued the same collectives and applied as many steps."""
    saved = ckpt.load_checkpoint(checkpoint)["model"]
    ranks = [torch.load(result.report_dir / f"params-rank{r}.pt") for r in range(len(result.reports))]
    for key, value in saved.items():
        assert all(torch.equal(rank[key], value) for rank in ranks), f"{key} differs"
    sequences = [[(c["name"], c["site"]) for c in report["collectives"]["calls"]] for report in result.reports]
    assert all(s == sequences[0] for s in sequences), "the ranks issued different collectives"
    assert len({report["optimizer_steps"] for report in result.reports}) == 1


def assert_no_collective_refused_by_nccl(result) -> None:
    """Every rank finished, issued collectives (the same ones), and the guard saw none that NCCL would refuse."""
    assert not result.timed_out, f"hang: not finished in time\n{result.tail()}"
    assert all(code == 0 for code in result.returncodes), result.tail()
    reports = [r["collectives"] for r in result.reports]
    assert all(r["calls"] for r in reports), "the guard saw no collective"
    sequences = [[(c["name"], c["site"]) for c in r["calls"]] for r in reports]
    assert all(s == sequences[0] for s in sequences), "the ranks issued different collectives"
    problems = [f"rank {rank}: {v}" for rank, r in enumerate(reports) for v in r["violations"]]
    if problems:
        raise CollectiveDeviceError("collectives NCCL would refuse:\n" + "\n".join(problems))


def read_probabilities(pred_csv: Path) -> dict[str, list[float]]:
    """pred.csv's class probabilities by clip id (the columns after id, label and pred)."""
    with open(pred_csv) as f:
        return {row["id"]: [float(row[c]) for c in list(row)[3:]] for row in csv.DictReader(f)}


def assert_predictions_agree(reference: Path, other: Path, atol: float) -> None:
    """The same clips, each class probability within `atol` of the reference's, and the same predicted class wherever
    the reference's top two are more than 2 x atol apart (a closer call may flip within the tolerance)."""
    expected, got = read_probabilities(reference), read_probabilities(other)
    assert list(got) == list(expected)
    for clip, probs in expected.items():
        worst = max(abs(a - b) for a, b in zip(probs, got[clip], strict=True))
        assert worst <= atol, f"{clip}: probabilities differ by {worst:.3g} (> {atol})"
        first, second = sorted(probs, reverse=True)[:2]
        if first - second > 2 * atol:
            assert got[clip].index(max(got[clip])) == probs.index(first), f"{clip}: another class predicted"
