# Sourced by the k-fold launchers (DFEW, MAFW). `run_folds FOLD_DIR RUN_FOLD "$@"` takes --folds k ... out of the
# arguments (default: $SPLITS, else all five), runs every fold whose final test has not run yet (an unfinished one
# resumes) as `RUN_FOLD k <output dir> <other arguments>`, with `FOLD_DIR k` printing a fold's output folder, then
# writes the fold table (summarize_folds.py) on the machine of rank 0.
run_folds() {
    local fold_dir=$1 run_fold=$2 split dir
    shift 2
    local folds args=() runs=()
    read -r -a folds <<< "${SPLITS:-1 2 3 4 5}"
    while [ $# -gt 0 ]; do
        if [ "$1" = --folds ]; then
            shift
            folds=()
            while [ $# -gt 0 ] && [[ "$1" != --* ]]; do folds+=("$1"); shift; done
        else
            args+=("$1")
            shift
        fi
    done
    for split in "${folds[@]}"; do
        dir=$("$fold_dir" "$split")
        runs+=("$dir")
        if [ -f "$dir/metrics.json" ] && grep -q "^Evaluation on the test set using" "$dir/log.txt"; then
            echo "fold ${split}: finished (${dir}/metrics.json), skipped"
            continue
        fi
        mkdir -p "$dir"
        "$run_fold" "$split" "$dir" ${args[@]+"${args[@]}"} 2>&1 | tee -a "$dir/nohup.out"
    done
    if [ "${NODE_RANK:-0}" = 0 ]; then
        python summarize_folds.py "${runs[@]}" \
            --out "$(dirname "${runs[0]}")/summary_$(basename "${runs[0]}" | sed 's/split0[0-9]*_//')"
    fi
}
