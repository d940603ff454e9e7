# Sourced by the Slurm launchers (finetune.sbatch, pretrain.sbatch), in the repository, inside the batch script.
# `run_job CMD...` runs a training command (srun inside), then requeues the job when the command says it was
# preempted (exit status 75, preemption.PREEMPTED): the requeued job runs the same command, which resumes.
source scripts/env.sh
# The batch shell and what runs under it (a dataset launcher, tee) ignore the stop signals: the training
# processes handle them (preemption.py installs its handlers over this) and decide what happens.
trap '' USR1 TERM
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
PREEMPTED=75

run_job() {
    echo "job ${SLURM_JOB_ID:-?} (run $((${SLURM_RESTART_COUNT:-0} + 1))) on ${SLURM_JOB_NODELIST:-?}," \
        "${SLURM_NTASKS:-1} tasks, $(date -u +%FT%TZ): $*"
    "$@"
    local status=$?
    if [ "$status" -eq "$PREEMPTED" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        echo "job ${SLURM_JOB_ID}: preempted with a checkpoint, $(date -u +%FT%TZ); requeued to resume"
        scontrol requeue "$SLURM_JOB_ID" ||
            echo "job ${SLURM_JOB_ID}: not requeued by this script (pending: Slurm requeued it; cancelled: resubmit)"
    fi
    return "$status"
}
