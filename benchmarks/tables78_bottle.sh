#!/usr/bin/env bash
# Tables VII (seconds per image) and VIII (GB) restricted to MVTec AD "bottle", from the runner's own time and
# memory measurements, then their reports.
#
#   benchmarks/tables78_bottle.sh [MVTEC_ROOT] [RUNS_DIR]
#       MVTEC_ROOT  default $ANOMBENCH_DATA_MVTEC (a folder holding bottle/ in the MVTec AD layout)
#       RUNS_DIR    default results/runs; the runs go to RUNS_DIR/table7-bottle and RUNS_DIR/table8-bottle
#                   (rerunning continues them: --resume)
#
# Every departure from the suite files is a --set override, so run.json and the reports list it:
# - the ResNets (PaDiM's and SPADE's) use a random init (weights=none): no ImageNet ResNet weights exist offline,
#   and time and memory do not depend on the weights' values (the AUROCs in these runs mean nothing);
# - the VAE trains on VAE_IMAGES augmented images for VAE_EPOCHS epochs instead of 10,000 x 100 (half a day on
#   2 CPU cores): its inference time and model size do not depend on how long it trained.
# - datasets=[mvtec]: STC is not on this machine, so Table VIII's STC part is left out.
set -euo pipefail

MVTEC_ROOT=${1:-${ANOMBENCH_DATA_MVTEC:-}}
if [ -z "$MVTEC_ROOT" ]; then
    echo "$(basename "$0"): no MVTec AD data: pass MVTEC_ROOT as the first argument or set ANOMBENCH_DATA_MVTEC" >&2
    exit 2
fi
RUNS_DIR=${2:-results/runs}
VAE_IMAGES=${VAE_IMAGES:-320}
VAE_EPOCHS=${VAE_EPOCHS:-1}

cd "$(dirname "$0")/.."
status=0
for table in table7 table8; do
    anombench run "suites/$table.yaml" --data "mvtec=$MVTEC_ROOT" --out "$RUNS_DIR/$table-bottle" --resume \
        --device cpu --threads 2 --quiet \
        --set "datasets=[mvtec]" \
        --set "categories=[bottle]" \
        --set "methods.spade.params.weights=none" \
        --set "methods.padim-r18-rd100.params.weights=none" \
        --set "methods.padim-wr50-rd550.params.weights=none" \
        --set "methods.vae.params.n_augmented=$VAE_IMAGES" \
        --set "methods.vae.params.epochs=$VAE_EPOCHS" \
        --set "methods.vae.params.progress=false" \
        || status=$?
    anombench report "$RUNS_DIR/$table-bottle"
done
exit "$status"
