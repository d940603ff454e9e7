# Sourced by the dataset launchers. `launch NPROC PORT SCRIPT FLAGS...` starts SCRIPT on this machine: torchrun with
# NPROC_PER_NODE (default NPROC) processes, NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT (default PORT); or, with
# LAUNCHER=srun (inside a Slurm job: scripts/slurm/*.sbatch), `srun python`, one process per task of the job.
launch() {
    local nproc=$1 port=$2
    shift 2
    if [ "${LAUNCHER:-torchrun}" = srun ]; then
        srun python "$@"
    else
        torchrun --nproc_per_node="${NPROC_PER_NODE:-$nproc}" --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
            --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-$port}" "$@"
    fi
}
