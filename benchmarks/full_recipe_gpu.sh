#!/usr/bin/env bash
# The full recipe (configs/shapes-full.yaml) with its pretraining, on one GPU machine, in
# commands that each fit the lent machine's 10-minute limit, with the 10%-label
# pretrained/scratch pair at the recipe's size run beside it:
#
#   bash benchmarks/full_recipe_gpu.sh pretrain OUT   # data; pretraining beside scratch at 10%;
#                                                     # then fine-tuning beside pretrained at 10%
#   bash benchmarks/full_recipe_gpu.sh resume OUT     # fine-tuning continues (--resume); test split
#
# The fine-tuning that does not finish on the GPU continues anywhere, a CPU too:
#   cat OUT/pack.part-* | tar xf - && omniformer finetune --config shapes-full \
#       --init runs/shapes-full/pretrain/last --resume && omniformer evaluate --model runs/shapes-full/qa/best
# OUT receives the logs, the test metrics as JSON and the checkpoints as pack.part-* (a tar in
# 16 MB pieces). If the pretraining checkpoint is missing at `resume` (a fresh machine), the
# stage restores the first stage's pieces from .gpu/pack.part-*. Wheels in .whl/ (for a
# machine whose Python lacks soundfile or soxr) are installed first.
# Time limits, in seconds from the stage's start: PRETRAIN_LIMIT (240) interrupts pretraining,
# STAGE_LIMIT (520 for pretrain, 400 for resume) interrupts the recipe's fine-tuning; an
# interrupted run saves its last checkpoint, so --resume continues it. PAIR=0 leaves the
# 10%-label runs out. EXTRA_PRETRAIN and EXTRA_FINETUNE add overrides to every run of their
# kind (a dry run on a CPU: EXTRA_PRETRAIN="--pretrain.steps=4" EXTRA_FINETUNE="--finetune.steps=4").
# Figures before 2026-11-30 in benchmarks/README.md came from an earlier version of this script
# and a model of width 192, depth 6 (--model.width=192 --model.depth=6 --model.heads=6).
set -uo pipefail
stage=${1:?pretrain or resume}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
omni=(python3 -m omniformer.cli)  # an array, so that `timeout` can run it too
config=configs/shapes-full.yaml
pretrained=runs/shapes-full/pretrain/last
pair=(--label_fraction=0.1 --finetune.steps=4000 --task.curriculum.steps=700 --finetune.workers=4
      --finetune.progress=false)
start=$(date +%s)
since() { echo $(( $(date +%s) - start )); }
left() { local s=$(( $1 - $(since) )); (( s > 10 )) && echo $s || echo 10; }
log() { echo "[$(since) s] $*"; }
make_data() {
  python3 -c "
from omniformer.config import load_config
from omniformer.tasks.pipeline import ensure_data
ensure_data(load_config('$config'), progress=False)" || exit 1
  log "data made"
}
# pair_run NAME [--init DIR]: a 10%-label run, then its test split, in the background; its log
# travels in the pack (what comes back is at most 8 files)
pair_run() {
  local name=$1; shift
  mkdir -p runs/full-$name
  { timeout -s INT "$(left "${STAGE_LIMIT:-520}")" "${omni[@]}" finetune --config $config \
      --out_dir=runs/full-$name "${pair[@]}" "$@" ${EXTRA_FINETUNE:-} >runs/full-$name/run.log 2>&1
    log "$name: fine-tuning rc $?"
    grep "^\[finetune\]" runs/full-$name/run.log | cut -c1-120 | tail -n 4
    "${omni[@]}" evaluate --model runs/full-$name/qa/best --workers 4 --json "$out/${name}_test.json" >>runs/full-$name/run.log 2>&1
    log "$name: test split rc $?"; } &
}
finetune_recipe() {  # finetune_recipe LIMIT [flags]: the recipe's fine-tuning from the pretraining
  local limit=$1; shift
  timeout -s INT "$limit" "${omni[@]}" finetune --config $config --init $pretrained \
    --finetune.workers=9 --finetune.progress=false "$@" ${EXTRA_FINETUNE:-} >>"$out/finetune.log" 2>&1
  local rc=$?; log "fine-tuning: rc $rc (124: stopped at the limit, resumable)"
  grep "^\[finetune\]" "$out/finetune.log" | cut -c1-220 | tail -n 14
}
pack() {  # pack FILES...: checkpoints and TensorBoard logs, in pieces small enough to come back
  local found=() path
  for path in "$@"; do [ -e "$path" ] && found+=("$path"); done
  tar cf - "${found[@]}" | split -b 16000000 - "$out/pack.part-"
}

case $stage in
pretrain)
  nvidia-smi -L 2>/dev/null
  python3 -c "import torch, soundfile, soxr, tokenizers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
  make_data
  [ "${PAIR:-1}" != 0 ] && pair_run scratch10
  timeout -s INT "${PRETRAIN_LIMIT:-240}" "${omni[@]}" pretrain --config $config --pretrain.workers=8 \
    --pretrain.progress=false ${EXTRA_PRETRAIN:-} >"$out/pretrain.log" 2>&1
  log "pretraining: rc $? (124: stopped at the limit)"
  grep "^\[pretrain\]" "$out/pretrain.log" | cut -c1-220 | tail -n 6
  [ "${PAIR:-1}" != 0 ] && pair_run pretrained10 --init $pretrained
  finetune_recipe "$(left "${STAGE_LIMIT:-520}")"
  wait
  for name in scratch10 pretrained10; do
    [ -f "$out/${name}_test.json" ] && python3 -c "
import json; m = json.load(open('$out/${name}_test.json'))
print('$name', ', '.join(f'{k} {100 * m[k]:.1f}' for k in
      ('text/accuracy', 'text/non_relational', 'text/relational', 'spoken/accuracy')))"
  done
  pack $pretrained/{model.safetensors,config.json,tokenizer.json,trainer.json} runs/shapes-full/pretrain/tb \
    runs/shapes-full/qa/last runs/shapes-full/qa/best runs/shapes-full/qa/tb runs/full-*/run.log
  ;;
resume)
  if [ ! -f $pretrained/model.safetensors ]; then
    echo "no pretraining checkpoint here: restoring the first stage's from .gpu/pack.part-*"
    cat .gpu/pack.part-* | tar xf - || exit 1
  fi
  make_data
  finetune_recipe "$(left "${STAGE_LIMIT:-400}")" --resume
  "${omni[@]}" evaluate --model runs/shapes-full/qa/best --workers 12 --json "$out/full_test.json" | tail -n 25
  log "test split evaluated"
  pack runs/shapes-full/qa/last runs/shapes-full/qa/best runs/shapes-full/qa/tb
  ;;
*) echo "stage: pretrain or resume, not $stage" >&2; exit 2 ;;
esac
