"""slurm.py (the process group from Slurm's variables) and, against a real one-node Slurm, the Slurm launchers: a
2-task CPU fine-tuning job preempted mid-epoch requeues itself, resumes and ends as the uninterrupted job.

The slow test starts Debian's munged, slurmctld and slurmd (`apt-get install slurmd slurmctld slurm-client munge`;
.ci/run installs them) as root, with a configuration of its own in a temporary folder, and stops them at the end.
Where they are not installed, or not root, it is skipped saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from support.demo_runs import demo_clips, resumable_finetune_flags
from support.fault_injection import ROOT, free_port

import checkpoint as ckpt
import preemption
import slurm

TIMEOUT = float(os.environ.get("SLURM_TEST_TIMEOUT", 600))
SEARCH_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"  # the daemons live in sbin


# --- slurm.py -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodelist, host", [("node07", "node07"), ("gpu[07-09,12],cpu1", "gpu07"),
                                            ("a1,b2", "a1"), ("rack[2-3]-n[001-004]", "rack2-n001"),
                                            ("c[5]", "c5")])
def test_first_host_of_a_node_list(nodelist, host):
    assert slurm.first_host(nodelist) == host


SRUN_TASK = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
             "SLURM_STEP_NODELIST": "gpu[11-14]", "SLURM_JOB_NODELIST": "gpu[11-14]", "SLURM_JOB_ID": "123456"}


def test_an_srun_task_gets_torchruns_variables():
    assert slurm.torch_environment(SRUN_TASK) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                                  "MASTER_ADDR": "gpu11", "MASTER_PORT": str(20000 + 123456 % 20000)}


def test_torchrun_variables_win_and_a_batch_script_is_no_task():
    assert slurm.torch_environment({**SRUN_TASK, "RANK": "0", "LOCAL_RANK": "0"}) == {}
    batch_script = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_NUM_TASKS"}  # srun sets it, sbatch not
    assert slurm.torch_environment(batch_script) == {}
    assert slurm.torch_environment({**SRUN_TASK, "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"


# --- a real one-node Slurm ----------------------------------------------------------------------------------------

SLURM_CONF = """\
ClusterName=maedfertest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
CredType=cred/munge
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobRequeue=1
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
KillWait=30
MinJobAge=600
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def missing_slurm() -> str | None:
    """Why the real-Slurm test cannot run here (None: it can)."""
    tools = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue")
             if shutil.which(t, path=SEARCH_PATH) is None]
    if tools:
        return (f"Slurm is not installed ({', '.join(tools)} missing): apt-get install slurmd slurmctld "
                "slurm-client munge")
    if os.geteuid() != 0:
        return "the one-node Slurm cluster of this test runs its daemons as root"
    return None


class Cluster:
    """munged, slurmctld and slurmd of a one-node cluster in `root`, with commands that use it."""

    def __init__(self, root: Path):
        self.root, self.host = root, socket.gethostname().split(".")[0]
        (root / "state").mkdir(parents=True)
        (root / "spool").mkdir()
        (root / "munge").mkdir(mode=0o700)
        conf = root / "slurm.conf"
        conf.write_text(SLURM_CONF.format(host=self.host, root=root, cpus=os.cpu_count(), ctld_port=free_port(),
                                          d_port=free_port()))
        socket_path = root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(conf), "PATH": SEARCH_PATH}
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.daemons = []
        try:
            self._start_daemons(conf, key, socket_path)
        except BaseException:
            self.stop()
            raise

    def _start_daemons(self, conf: Path, key: Path, socket_path: Path) -> None:
        root = self.root
        self.daemons.append(self._start(["munged", "--foreground", "--force", f"--socket={socket_path}",
                                         f"--key-file={key}", f"--pid-file={root}/munge/munged.pid",
                                         f"--log-file={root}/munge/munged.log",
                                         f"--seed-file={root}/munge/munged.seed"], "munged"))
        self._wait(lambda: socket_path.exists(), "munged's socket")
        self.daemons.append(self._start(["slurmctld", "-D", "-i", "-f", str(conf)], "slurmctld"))
        self.daemons.append(self._start(["slurmd", "-D", "-f", str(conf)], "slurmd"))
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout, "the node to be idle")

    def _start(self, command: list[str], name: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.out", "w")  # noqa: SIM115  (closed with the process)
        return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not ready():
            if time.time() > deadline or any(d.poll() is not None for d in self.daemons):
                logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                                 for p in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")))
                raise RuntimeError(f"the test's Slurm cluster: no {what} after {timeout:.0f} s\n{logs}")
            time.sleep(0.5)

    def run(self, *command: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def job(self, job_id: str) -> dict[str, str]:
        """scontrol show job's fields."""
        fields = {}
        for word in self.run("scontrol", "show", "job", "-o", job_id).stdout.split():
            key, _, value = word.partition("=")
            fields[key] = value
        return fields

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run("scancel", "--full", "--user", "root")
        for daemon in reversed(self.daemons):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing_slurm()
    if reason:
        pytest.skip(reason)
    root = Path(f"/tmp/maedfer-slurm-{os.getpid()}")  # a short path: munged's socket path has a length limit
    shutil.rmtree(root, ignore_errors=True)
    started = None
    try:
        started = Cluster(root)
        yield started
    finally:
        if started is not None:
            started.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return demo_clips(tmp_path_factory.mktemp("slurm") / "data")


def submit(cluster: Cluster, work: Path, flags: list[str], tasks: int = 2, **env: str) -> str:
    work.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["sbatch", "--parsable", "--ntasks", str(tasks), "--cpus-per-task", "1",
                             f"--output={work}/slurm-%j.out", str(ROOT / "scripts/slurm/finetune.sbatch"), *flags],
                            env={**cluster.env, "PYTHONUNBUFFERED": "1", **env}, cwd=work, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def wait_for(condition, what: str, deadline: float, cluster: Cluster, job_id: str, work: Path):
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            cluster.run("scancel", job_id)
            log = "\n".join(p.read_text(errors="replace")[-4000:] for p in work.glob("slurm-*.out"))
            pytest.fail(f"job {job_id}: no {what} after {TIMEOUT:.0f} s: {cluster.job(job_id)}\n{log}")
        time.sleep(0.2)


def finished(cluster: Cluster, job_id: str) -> str | None:
    state = cluster.job(job_id).get("JobState", "")
    return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") else None


def same_end(a: Path, b: Path) -> None:
    ca, cb = ckpt.load_checkpoint(a / "checkpoint-1.pth"), ckpt.load_checkpoint(b / "checkpoint-1.pth")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert (a / "pred.csv").read_text() == (b / "pred.csv").read_text()
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def preempt(cluster: Cluster, job: str, command: list[str], work: Path, deadline: float) -> None:
    """Once the job's current run has written a step checkpoint of its own (mid-epoch), run `command`; wait for
    the job to be requeued."""
    out, restarts = work / "out", int(cluster.job(job).get("Restarts", 0))
    before = ckpt.load_checkpoint(out / ckpt.LAST) if (out / ckpt.LAST).is_file() else {}
    position = (before.get("epoch"), before.get("step"))

    def mid_epoch() -> bool:
        if not (out / ckpt.LAST).is_file() or cluster.job(job).get("JobState") != "RUNNING":
            return False
        last = ckpt.load_checkpoint(out / ckpt.LAST)
        return last["step"] is not None and (last["epoch"], last["step"]) != position

    wait_for(mid_epoch, "step checkpoint", deadline, cluster, job, work)
    sent = time.time()
    assert cluster.run(*command).returncode == 0
    wait_for(lambda: int(cluster.job(job).get("Restarts", 0)) > restarts, "requeue", deadline, cluster, job, work)
    print(f"{' '.join(command[:2])}: requeued {time.time() - sent:.1f} s after the signal")
    # A requeued job waits for its old credentials to expire (AuthInfo's cred_expire: 10 s here, 2 minutes by
    # default); starting it sooner races slurmd's list of revoked credentials ("Job credential revoked").


@pytest.mark.slow
def test_a_preempted_slurm_job_requeues_itself_resumes_and_ends_as_the_uninterrupted_one(cluster, clips, tmp_path):
    deadline = time.time() + TIMEOUT
    reference = tmp_path / "reference"
    job = submit(cluster, reference, resumable_finetune_flags(clips, reference / "out"))
    state = wait_for(lambda: finished(cluster, job), "end", deadline, cluster, job, reference)
    assert state == "COMPLETED", (reference / f"slurm-{job}.out").read_text()[-4000:]

    work = tmp_path / "preempted"
    out = work / "out"
    job = submit(cluster, work, resumable_finetune_flags(clips, out))
    for command in (["scancel", "--signal=USR1", "--full", job], ["scontrol", "requeue", job]):
        preempt(cluster, job, command, work, deadline)
    state = wait_for(lambda: finished(cluster, job), "end", deadline, cluster, job, work)
    log = (work / f"slurm-{job}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-4000:]
    assert log.count("preempted at epoch") >= 2 and "requeued to resume" in log, log[-4000:]
    assert f"exit status {preemption.PREEMPTED}" in log
    same_end(reference / "out", out)


@pytest.mark.slow
def test_a_dataset_recipe_runs_through_the_slurm_launcher(cluster, tmp_path):
    """RECIPE=ferv39k: the FERV39k launcher's recipe under srun (its flags, then the test's, which shrink the run)."""
    from test_launchers import fake_dataset

    data = tmp_path / "data"
    fake_dataset(data, 7, "jpg", ("train.csv", "test.csv"))
    out = tmp_path / "out"
    job = submit(cluster, tmp_path, ["--data_path", str(data), "--depth", "1", "--epochs", "1", "--batch_size", "2",
                                     "--num_workers", "0", "--device", "cpu"],
                 tasks=1, RECIPE="ferv39k", FINETUNE="", OUTPUT_DIR=str(out), DATA_ROOT=str(data))
    state = wait_for(lambda: finished(cluster, job), "end", time.time() + TIMEOUT, cluster, job, tmp_path)
    log = (tmp_path / f"slurm-{job}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-4000:]
    assert json.loads((out / "metrics.json").read_text())["num_clips"] == 7
    args = ckpt.load_checkpoint(out / "checkpoint-0.pth")["args"]
    assert (args.data_set, args.input_size, args.fusion, args.batch_size) == ("FERV39k", 160, "add", 2)
