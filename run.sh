#!/bin/sh
# Train on a Slurm cluster: one srun task per GPU, main.py reads rank/world/master from Slurm's variables.
#
#   sh run.sh CONFIG JOBNAME GPUS PARTITION [KEY VALUE ...]
#   sh run.sh configs/BERT_L12_H768_experiments/16tasks_training_basedense_stage1_64gpu.yaml stage1 64 mypart
#
# Output goes to work_dirs/<CONFIG without configs/ and .yaml>/JOBNAME, and the run always resumes from the
# last checkpoint there (a fresh directory loads MODEL.WEIGHTS instead), so re-running the same command
# continues an interrupted job.  Environment knobs (defaults in brackets):
#   GPUS_PER_NODE [8]          tasks per node = min(GPUS, GPUS_PER_NODE)
#   CPUS_PER_TASK [5]          --cpus-per-task
#   GRES [gpu:<tasks/node>]    --gres; GRES=none omits it (CPU clusters, tests)
#   SRUN_ARGS []               extra srun arguments, e.g. "--time=2-00:00:00 --signal=USR1@120"
#   DATA_PATH                  exported to the job: the root of the datasets
#   PYTHON [python]            interpreter that runs main.py
set -eu

if [ $# -lt 4 ]; then
    echo "usage: sh run.sh CONFIG JOBNAME GPUS PARTITION [KEY VALUE ...]" >&2
    exit 2
fi
CONFIG=$1
JOBNAME=$2
GPUS=$3
PARTITION=$4
shift 4

case "$GPUS" in
    ''|*[!0-9]*|0) echo "run.sh: GPUS must be a positive integer, got '$GPUS'" >&2; exit 2 ;;
esac

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
PYTHON=${PYTHON:-python}
if [ "$GPUS" -lt "$GPUS_PER_NODE" ]; then TPN=$GPUS; else TPN=$GPUS_PER_NODE; fi
GRES=${GRES:-gpu:$TPN}
if [ -n "${DATA_PATH:-}" ]; then export DATA_PATH; fi

NAME=${CONFIG#./}
NAME=${NAME#configs/}
NAME=${NAME%.yaml}
OUTPUT_DIR=work_dirs/$NAME/$JOBNAME
MAIN=$(dirname "$0")/main.py

if [ "$GRES" = none ]; then GRES_ARG=; else GRES_ARG=--gres=$GRES; fi

# $GRES_ARG and $SRUN_ARGS are split into words on purpose; everything else is quoted.
# shellcheck disable=SC2086
exec srun --partition="$PARTITION" --job-name="$JOBNAME" -n"$GPUS" --ntasks-per-node="$TPN" \
    --cpus-per-task="$CPUS_PER_TASK" $GRES_ARG --kill-on-bad-exit=1 $SRUN_ARGS \
    "$PYTHON" -u "$MAIN" --num-gpus "$GPUS" --config-file "$CONFIG" --resume "$@" OUTPUT_DIR "$OUTPUT_DIR"
