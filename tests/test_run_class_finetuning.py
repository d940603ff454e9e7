"""The fine-tuning entry script end to end on a few generated clips: train, validate, test, resume, --eval."""

from __future__ import annotations

import argparse
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from support.demo_runs import assert_predictions_agree, demo_clips

import checkpoint as ckpt
import datasets
import run_class_finetuning as rcf
from datasets import TooManyBadSamplesError
from metrics import classification_metrics


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return demo_clips(tmp_path_factory.mktemp("demo") / "data")


def demo_args(root, output_dir, *extra: str) -> argparse.Namespace:
    """The --demo configuration, shrunk to seconds: 32 px, depth 1, two epochs, no workers."""
    parser = rcf.get_args_parser()
    parser.set_defaults(**rcf.DEMO_DEFAULTS)
    return parser.parse_args([
        "--data_path", str(root), "--data_root", str(root), "--output_dir", str(output_dir), "--input_size", "32",
        "--short_side_size", "32", "--model", "vit_tiny_dim128_no_depth_patch16_64", "--depth", "1",
        "--lg_region_size", "2", "1", "2", "--epochs", "2", "--warmup_epochs", "1", "--batch_size", "4",
        "--num_workers", "0", "--device", "cpu", "--no-disable_eval_during_finetuning", *extra])


def read_pred(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fine_tune_validate_test_and_reports_agree(demo_root, tmp_path):
    out = tmp_path / "run"
    rcf.main(demo_args(demo_root, out))
    log = (out / "log.txt").read_text().splitlines()
    epochs = [json.loads(line) for line in log if line.startswith("{\"train_")]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert all(np.isfinite(e["train_loss"]) and 0 <= e["val_uar"] <= 1 for e in epochs)
    assert (out / "checkpoint-1.pth").is_file() and (out / "checkpoint-best.pth").is_file()

    rows = read_pred(out / "pred.csv")
    test_lines = (demo_root / "test.csv").read_text().splitlines()
    assert [r["id"] for r in rows] == [line.split(" ")[0] for line in test_lines]
    classes = list(rows[0])[3:]
    assert len(classes) == 5
    probs = np.array([[float(r[c]) for c in classes] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [int(r["pred"]) for r in rows] == probs.argmax(1).tolist()
    metrics = json.loads((out / "metrics.json").read_text())
    expected = classification_metrics([int(r["label"]) for r in rows], probs.argmax(1), 5)
    assert metrics["uar"] == pytest.approx(expected["uar"]) and metrics["war"] == pytest.approx(expected["war"])
    assert metrics["num_clips"] == len(rows) and metrics["num_views"] == 4 * len(rows)
    assert f"Final UAR: {100 * metrics['uar']:.2f}%, Final WAR: {100 * metrics['war']:.2f}%" in log
    assert (out / "confusion_matrix.png").is_file()


def test_eval_of_a_saved_checkpoint_reproduces_the_final_test(demo_root, tmp_path):
    """Also in bf16, within its rounding (tests/test_gpu.py compares a GPU-trained checkpoint's GPU and CPU runs)."""
    out = tmp_path / "run"
    rcf.main(demo_args(demo_root, out, "--epochs", "1", "--disable_eval_during_finetuning"))
    checkpoint = str(out / "checkpoint-0.pth")
    for amp, atol in (("none", 1e-5), ("bf16", 5e-2)):
        rcf.main(demo_args(demo_root, tmp_path / amp, "--eval", "--resume", checkpoint, "--amp", amp))
        assert_predictions_agree(out / "pred.csv", tmp_path / amp / "pred.csv", atol)
    same = [r["pred"] for r in read_pred(tmp_path / "none" / "pred.csv")]
    assert same == [r["pred"] for r in read_pred(out / "pred.csv")]


def test_auto_resume_continues_from_the_last_checkpoint(demo_root, tmp_path):
    out = tmp_path / "run"
    rcf.main(demo_args(demo_root, out, "--epochs", "1", "--disable_eval_during_finetuning"))
    checkpoint = ckpt.load_checkpoint(out / "checkpoint-0.pth")
    assert checkpoint["epoch"] == 0 and isinstance(checkpoint["args"], argparse.Namespace)
    rcf.main(demo_args(demo_root, out, "--epochs", "2", "--disable_eval_during_finetuning"))
    epochs = [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()
              if line.startswith("{\"train_")]
    assert epochs == [0, 1]  # the second run resumed at epoch 1 instead of starting over
    pred = (out / "pred.csv").read_text()
    rcf.main(demo_args(demo_root, out, "--epochs", "2", "--disable_eval_during_finetuning"))  # a finished run
    log = (out / "log.txt").read_text()
    assert log.count('{"train_') == 2 and log.count("Evaluation on the test set") == 3  # only the test ran again
    assert (out / "pred.csv").read_text() == pred


def test_eval_of_an_original_format_checkpoint(demo_root, tmp_path):
    """A checkpoint as the original code saved it (args Namespace, optimizer, scaler) evaluates with --eval."""
    args = demo_args(demo_root, tmp_path, "--fusion", "add")
    model = rcf.create_model(args)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 99,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(**vars(args))}, tmp_path / "checkpoint-99.pth")
    rcf.main(demo_args(demo_root, tmp_path, "--fusion", "add", "--eval"))  # auto-resume finds checkpoint-99
    assert len(read_pred(tmp_path / "pred.csv")) == len((demo_root / "test.csv").read_text().splitlines())
    shutil.rmtree(tmp_path)


def test_wrong_class_count_for_the_dataset_is_refused(demo_root, tmp_path):
    with pytest.raises(ValueError, match="nb_classes"):
        rcf.main(demo_args(demo_root, tmp_path, "--nb_classes", "7"))


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(demo_root, tmp_path):
    """torchrun with 2 CPU processes (gloo): the gathered, de-padded test gives the single-process predictions."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = demo_args(demo_root, tmp_path, "--fusion", "add")
    torch.manual_seed(0)
    model = rcf.create_model(args)
    for p in model.parameters():  # a model whose predictions differ between clips
        torch.nn.init.normal_(p, std=0.05)
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    flags = [*sys_argv_of(args), "--eval", "--resume", str(checkpoint), "--no_auto_resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name, launcher in (("one", [sys.executable]), ("two", ["torchrun", "--nproc_per_node", "2"])):
        run = subprocess.run([*launcher, str(Path(rcf.__file__)), *flags, "--output_dir", str(tmp_path / name)],
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    one = {r["id"]: r for r in read_pred(tmp_path / "one" / "pred.csv")}
    two = read_pred(tmp_path / "two" / "pred.csv")
    listed = [line.split()[0] for line in (demo_root / "test.csv").read_text().splitlines()]
    assert list(one) == listed  # one process: the list's order; two: the order the original's merge meets them in
    assert [r["id"] for r in two] == [listed[i] for i in datasets.original_test_order(len(listed), 4, 2)]
    for row in two:
        assert row["pred"] == one[row["id"]]["pred"]
        assert all(abs(float(row[k]) - float(one[row["id"]][k])) < 1e-6 for k in list(row)[3:])
    metrics = [json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two")]
    assert metrics[0]["num_views"] == metrics[1]["num_views"] == 4 * len(one)
    assert metrics[0]["uar"] == pytest.approx(metrics[1]["uar"])


def sys_argv_of(args: argparse.Namespace) -> list[str]:
    """The command-line flags that rebuild this demo configuration in another process."""
    return ["--demo", "--data_path", args.data_path, "--data_root", args.data_root, "--input_size", "32",
            "--short_side_size", "32", "--depth", "1", "--lg_region_size", "2", "1", "2", "--batch_size", "4",
            "--num_workers", "0", "--device", "cpu", "--no-disable_eval_during_finetuning",
            *(["--fusion", args.fusion] if args.fusion else [])]


# --- resume, bad runs --------------------------------------------------------------------------------------------

class Interrupted(Exception):
    """Stands in for a kill: raised from the loss at a chosen training step."""


def loss_failing_at(monkeypatch, call: int, failure):
    """Make the demo's loss (label smoothing) call `failure()` at its `call`-th use (1-based)."""
    calls = []

    class Loss(rcf.LabelSmoothingCrossEntropy):
        def forward(self, x, target):
            calls.append(1)
            return failure(super().forward(x, target)) if len(calls) == call else super().forward(x, target)

    monkeypatch.setattr(rcf, "LabelSmoothingCrossEntropy", Loss)


def resume_flags(*extra: str) -> tuple[str, ...]:
    """An epoch of 5 steps with a checkpoint every 2 and drop path (an RNG the model draws from). Validation, whose
    clips are random too, and resuming at epoch ends are left to the slow SIGKILL test."""
    return ("--epochs", "1", "--save_every_steps", "2", "--save_ckpt_freq", "1", "--drop_path", "0.1",
            "--disable_eval_during_finetuning", "--test_num_segment", "1", "--test_num_crop", "1", *extra)


def weights_of(path) -> dict:
    checkpoint = ckpt.load_checkpoint(path)
    return {"model": checkpoint["model"], "optimizer": checkpoint["optimizer"]["state"]}


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    rcf.main(demo_args(demo_root, out, *resume_flags()))
    return out


def assert_same_run(a, b):
    """Bit-identical final weights and optimizer state, predictions and metrics."""
    wa, wb = weights_of(a / "checkpoint-0.pth"), weights_of(b / "checkpoint-0.pth")
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert all(torch.equal(x, y) for k in wa["optimizer"] for x, y in zip(wa["optimizer"][k].values(),
                                                                            wb["optimizer"][k].values()))
    assert (a / "pred.csv").read_text() == (b / "pred.csv").read_text()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma == mb


def test_resume_mid_epoch_equals_the_uninterrupted_run(demo_root, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupt(loss):
        raise Interrupted

    loss_failing_at(monkeypatch, 4, interrupt)  # in step 3 (0-based): the last checkpoint is of step 2
    with pytest.raises(Interrupted):
        rcf.main(demo_args(demo_root, out, *resume_flags()))
    last = ckpt.load_checkpoint(out / "checkpoint-last.pth")
    assert (last["epoch"], last["step"]) == (0, 2) and len(last["rng"]) == 1
    monkeypatch.undo()
    rcf.main(demo_args(demo_root, out, *resume_flags()))
    assert_same_run(uninterrupted, out)
    epochs = [json.loads(line) for line in (out / "log.txt").read_text().splitlines() if line.startswith("{")]
    reference = [json.loads(line) for line in (uninterrupted / "log.txt").read_text().splitlines()
                 if line.startswith("{")]
    assert epochs == reference  # the epoch averages too: the interrupted epoch's meters were in the checkpoint


def test_non_finite_loss_stops_naming_the_step_and_the_last_good_checkpoint(demo_root, tmp_path, monkeypatch):
    loss_failing_at(monkeypatch, 4, lambda loss: loss * float("nan"))
    with pytest.raises(rcf.engine.NonFiniteLossError) as err:
        rcf.main(demo_args(demo_root, tmp_path, "--save_every_steps", "1"))
    assert "epoch 0, step 3" in str(err.value) and f"last good checkpoint: {tmp_path / 'checkpoint-last.pth'}" in str(
        err.value)
    assert ckpt.load_checkpoint(tmp_path / "checkpoint-last.pth")["step"] == 3


def test_unreadable_training_clip_beyond_max_bad_samples_fails_naming_it(demo_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    broken = data / (data / "train.csv").read_text().split()[0]
    frame = sorted(broken.iterdir())[3]
    frame.write_bytes(b"not a jpeg")
    args = demo_args(data, tmp_path / "run", "--max_bad_samples", "0", "--disable_eval_during_finetuning")
    args.data_root = str(data)
    with pytest.raises(TooManyBadSamplesError, match=rf"1 unreadable samples.*\n.*{frame.name}"):
        rcf.main(args)


def test_output_dir_of_a_previous_run_is_not_overwritten(demo_root, tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds a previous run"):
        rcf.main(demo_args(demo_root, tmp_path, "--no_auto_resume"))
    assert (tmp_path / "metrics.json").read_text() == "{}"


# A run of run_class_finetuning.py that SIGKILLs itself half-way through its KILL_AT_SAVE-th torch.save (a torn
# temporary file is left behind, as a kill during a checkpoint write leaves it).
KILL_DRIVER = """
import io, os, signal, sys
import torch
sys.path.insert(0, os.environ["REPO"])
import run_class_finetuning as rcf

kill_at, calls, real_save = int(os.environ.get("KILL_AT_SAVE", 0)), [], torch.save

def save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == kill_at:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
parser = rcf.get_args_parser()
parser.set_defaults(**rcf.DEMO_DEFAULTS)
rcf.main(parser.parse_args())
"""


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(demo_root, tmp_path):
    """SIGKILL (during a checkpoint write, then at random times), resume each time: bit-identical end result."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    driver = tmp_path / "driver.py"
    driver.write_text(KILL_DRIVER)
    repo = str(Path(rcf.__file__).parent)
    flags = [*sys_argv_of(demo_args(demo_root, tmp_path, "--fusion", "none"))[1:], "--epochs", "3",
             "--warmup_epochs", "1", "--num_workers", "1", "--save_every_steps", "2", "--keep_last_ckpts", "1",
             "--save_ckpt_freq", "1", "--drop_path", "0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPO": repo}

    def launch(out: Path, kill_at_save: int = 0) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(driver), *flags, "--output_dir", str(out)],
                                env={**env, "KILL_AT_SAVE": str(kill_at_save)}, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    reference = launch(tmp_path / "reference")
    start = time.time()
    _, err = reference.communicate(timeout=900)
    assert reference.returncode == 0, err[-3000:]
    duration = time.time() - start

    out = tmp_path / "killed"
    # 1: killed half-way through its 6th checkpoint write (epoch 0: checkpoint-last.pth after steps 2 and 4,
    # checkpoint-best.pth, checkpoint-0.pth; epoch 1: after its steps 1 and 3): a torn .tmp stays behind.
    run = launch(out, kill_at_save=6)
    run.wait(timeout=900)
    assert run.returncode == -signal.SIGKILL and (out / "checkpoint-last.pth.tmp").is_file()
    # 2: a torn checkpoint-last.pth itself (as a non-atomic copy would leave it): auto-resume must skip it.
    torn = (out / "checkpoint-last.pth").read_bytes()
    (out / "checkpoint-last.pth").unlink()
    (out / "checkpoint-last.pth").write_bytes(torn[: len(torn) // 3])
    # 3: SIGKILL at random times, resuming each time, until a run finishes.
    rng = random.Random(7)
    logs, kills = [], 0
    while True:
        run = launch(out)
        if kills < 3:
            try:
                run.wait(timeout=rng.uniform(0.3, 0.9) * duration)
            except subprocess.TimeoutExpired:
                run.send_signal(signal.SIGKILL)
                kills += 1
        _, err = run.communicate(timeout=900)
        logs.append(err)
        if run.returncode == 0:
            break
        assert run.returncode == -signal.SIGKILL, err[-3000:]
    # The first run that got as far as loading a checkpoint (a kill can come before it) skipped the torn one.
    resumed = next(log for log in logs if "resumed model weights" in log or "skipping an incomplete" in log)
    assert "skipping an incomplete checkpoint" in resumed and "checkpoint-last.pth" in resumed
    assert kills >= 1
    for name in ("checkpoint-2.pth", "checkpoint-last.pth"):
        a, b = weights_of(tmp_path / "reference" / name), weights_of(out / name)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert all(torch.equal(x, y) for k in a["optimizer"] for x, y in zip(a["optimizer"][k].values(),
                                                                            b["optimizer"][k].values()))
    assert (tmp_path / "reference" / "pred.csv").read_text() == (out / "pred.csv").read_text()
    assert json.loads((tmp_path / "reference" / "metrics.json").read_text()) == json.loads(
        (out / "metrics.json").read_text())
    assert not (out / "checkpoint-0.pth").exists() and not (out / "checkpoint-1.pth").exists()  # keep_last 1


# Under torchrun: fine-tune, then save this rank's parameters for the test to compare.
DDP_DRIVER = """
import os, sys
import torch
sys.path.insert(0, os.environ["REPO"])
import run_class_finetuning as rcf

parser = rcf.get_args_parser()
parser.set_defaults(**rcf.DEMO_DEFAULTS)
args = parser.parse_args()
model = rcf.main(args)
torch.save(model.state_dict(), os.path.join(args.output_dir, f"params-rank{os.environ['RANK']}.pt"))
"""


@pytest.mark.slow
def test_two_process_training_epoch_keeps_ranks_in_sync(demo_root, tmp_path):
    """Two torchrun "nodes" of one CPU process each (gloo), as on two machines: an epoch trains and every rank ends
    with the checkpoint's parameters."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    flags = [*sys_argv_of(demo_args(demo_root, tmp_path, "--fusion", "add"))[1:], "--epochs", "1", "--warmup_epochs",
             "0", "--batch_size", "2", "--disable_eval_during_finetuning", "--output_dir", str(tmp_path / "o")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPO": str(Path(rcf.__file__).parent),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen(["torchrun", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), str(driver), *flags],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-3000:] + outputs[1][-3000:]
    ranks = [torch.load(tmp_path / "o" / f"params-rank{r}.pt") for r in (0, 1)]
    saved = ckpt.load_checkpoint(tmp_path / "o" / "checkpoint-0.pth")
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]) and torch.equal(value, saved["model"][key]), key
    # 20 clips, global batch 2 x 2 processes: 5 optimizer steps.
    assert {int(state["step"]) for state in saved["optimizer"]["state"].values()} == {5}
    assert len(saved["rng"]) == 2  # each rank's RNG states, for a bit-exact resume with the same world size
    assert saved["args"].world_size == 2 and "global batch 4" in outputs[0]
    log = (tmp_path / "o" / "log.txt").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log if line.startswith('{"train_')] == [0]  # rank 0 alone writes


@pytest.mark.slow
def test_the_original_launcher_form_torch_distributed_launch_runs(demo_root, tmp_path):
    """`python -m torch.distributed.launch --nproc_per_node=1 run_class_finetuning.py ...`, the authors' launcher:
    on torch 2.x it passes --local-rank=0, which the script accepts."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = demo_args(demo_root, tmp_path, "--fusion", "none")
    flags = [*sys_argv_of(args), "--epochs", "1", "--warmup_epochs", "0", "--disable_eval_during_finetuning",
             "--output_dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=1",
                          "--master_port", "29541", str(Path(rcf.__file__)), *flags],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
    stored = ckpt.load_checkpoint(tmp_path / "run" / "checkpoint-0.pth")["args"]
    assert stored.local_rank == 0  # given by the launcher (the default is -1)


# --- the CA fork's checkpoints with the CA fork's command lines (no --fusion) ------------------------------------

def fork_flags(root, output_dir, *extra: str) -> list[str]:
    """A command line in the CA fork's style, for the demo data shrunk to seconds: every flag but --fusion."""
    return ["--data_set", "DEMO", "--nb_classes", "5", "--data_path", str(root), "--data_root", str(root),
            "--output_dir", str(output_dir), "--model", "vit_tiny_dim128_no_depth_patch16_64", "--depth", "1",
            "--input_size", "32", "--short_side_size", "32", "--lg_region_size", "2", "1", "2",
            "--lg_classify_token_type", "region", "--num_frames", "16", "--sampling_rate", "1",
            "--test_num_segment", "2", "--test_num_crop", "2", "--batch_size", "4", "--num_workers", "0",
            "--num_sample", "1", "--epochs", "1", "--warmup_epochs", "0", "--device", "cpu", *extra]


def fork_args(root, output_dir, *extra: str) -> argparse.Namespace:
    return rcf.get_args_parser().parse_args(fork_flags(root, output_dir, *extra))


def save_fork_checkpoint(root, path, fusion: str) -> dict:
    """A checkpoint as the CA fork writes it: its stored arguments name no fusion (its model always has the branch)."""
    args = fork_args(root, path.parent, "--fusion", fusion)
    torch.manual_seed(0)
    model = rcf.create_model(args)
    with torch.no_grad():  # a head that tells the clips apart
        model.head.weight.normal_(0, 0.5)
    del args.fusion
    state = {"model": model.state_dict(), "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
             "epoch": 99, "scaler": None, "args": args}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state["model"]


@pytest.mark.parametrize("fusion", ["add", "cat"])
def test_a_ca_fork_checkpoint_evaluates_without_fusion(demo_root, tmp_path, fusion, caplog):
    checkpoint = tmp_path / "released" / "checkpoint-99.pth"
    weights = save_fork_checkpoint(demo_root, checkpoint, fusion)
    with caplog.at_level("INFO"):
        model = rcf.main(fork_args(demo_root, tmp_path / "eval", "--eval", "--resume", str(checkpoint)))
    assert model.fusion == fusion and torch.equal(model.state_dict()["head.weight"], weights["head.weight"])
    assert f"--fusion {fusion}: read off the weights of {checkpoint}" in caplog.text
    assert len(read_pred(tmp_path / "eval" / "pred.csv")) == len((demo_root / "test.csv").read_text().splitlines())


def test_auto_resume_reads_the_fusion_of_the_checkpoint_it_finds(demo_root, tmp_path, caplog):
    save_fork_checkpoint(demo_root, tmp_path / "checkpoint-99.pth", "add")  # the CA fork's --eval re-run
    with caplog.at_level("INFO"):
        model = rcf.main(fork_args(demo_root, tmp_path, "--eval"))
    assert model.fusion == "add"
    assert f"read off the weights of {tmp_path / 'checkpoint-99.pth'}" in caplog.text


def test_a_fusion_that_contradicts_the_weights_names_both(demo_root, tmp_path):
    checkpoint = tmp_path / "released" / "checkpoint-99.pth"
    save_fork_checkpoint(demo_root, checkpoint, "add")
    with pytest.raises(ckpt.CheckpointError, match=rf"--fusion cat contradicts {checkpoint}, whose weights are "
                                                    r"those of --fusion add: give --fusion add or leave the flag out"):
        rcf.main(fork_args(demo_root, tmp_path / "eval", "--eval", "--resume", str(checkpoint), "--fusion", "cat"))
    with pytest.raises(ckpt.CheckpointError, match="--fusion none contradicts"):
        rcf.main(fork_args(demo_root, tmp_path / "eval", "--eval", "--resume", str(checkpoint), "--fusion", "none"))


def test_finetune_from_a_pretraining_checkpoint_keeps_the_fusion_given(demo_root, tmp_path):
    plain = rcf.create_model(fork_args(demo_root, tmp_path))  # no --fusion: plain MAE-DFER
    assert plain.fusion is None
    encoder = {f"encoder.{k}": v for k, v in plain.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
    torch.save({"model": {**encoder, "mask_token": torch.zeros(1, 1, 128)}}, tmp_path / "pretrained.pth")
    model = rcf.main(fork_args(demo_root, tmp_path / "run", "--finetune", str(tmp_path / "pretrained.pth"),
                               "--fusion", "add", "--disable_eval_during_finetuning"))
    assert model.fusion == "add"
    assert ckpt.load_checkpoint(tmp_path / "run" / "checkpoint-0.pth")["args"].fusion == "add"
    model = rcf.main(fork_args(demo_root, tmp_path / "plain", "--finetune", str(tmp_path / "pretrained.pth"),
                               "--disable_eval_during_finetuning"))
    assert model.fusion is None  # not given: none, the original model


@pytest.mark.slow
def test_the_ca_fork_command_line_evaluates_its_checkpoint(demo_root, tmp_path):
    """`python run_class_finetuning.py <the CA fork's flags, no --fusion> --eval --resume CKPT` as a user types it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    checkpoint = tmp_path / "released" / "checkpoint-99.pth"
    save_fork_checkpoint(demo_root, checkpoint, "add")
    run = subprocess.run([sys.executable, str(Path(rcf.__file__)),
                          *fork_flags(demo_root, tmp_path / "eval", "--eval", "--resume", str(checkpoint))],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"--fusion add: read off the weights of {checkpoint}" in run.stdout + run.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_clips"] == 10


def test_augmentation_on_the_device_trains_and_resumes_bit_exactly(demo_root, tmp_path):
    """--augment_on device (reachable on the CPU): the loader gives uint8 clips and their draws, the engine
    augments them; a run killed after its first epoch resumes to the uninterrupted run's weights exactly."""
    flags = ("--augment_on", "device", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0")
    whole = rcf.main(demo_args(demo_root, tmp_path / "whole", *flags))
    rcf.main(demo_args(demo_root, tmp_path / "part", *flags, "--epochs", "1"))
    (tmp_path / "part" / "checkpoint-0.pth").unlink()  # only checkpoint-last.pth (epoch 0) is left to resume from
    resumed = rcf.main(demo_args(demo_root, tmp_path / "part", *flags))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert read_pred(tmp_path / "whole" / "pred.csv") == read_pred(tmp_path / "part" / "pred.csv")
