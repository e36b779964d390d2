#!/usr/bin/env bash
# The full recipe (configs/shapes-full.yaml) on one GPU machine, in two stages that each fit
# a 10-minute command, with the 10%-label pretraining-gain pair run beside them at the
# standard setting (each pair member shares the GPU with one stage of the recipe):
#
#   bash benchmarks/full_recipe_gpu.sh pretrain OUT   # data, tokenizer, pretraining; scratch at 10% labels
#   bash benchmarks/full_recipe_gpu.sh finetune OUT   # fine-tuning; pretrained at 10% labels; test split
#
# OUT receives the logs, the test metrics as JSON and the checkpoints as pack.part-* (a tar
# split into 15 MB pieces: `cat OUT/pack.part-* | tar xf -` restores them under runs/).
# If runs/shapes-full/pretrain/last is missing at the second stage (a fresh machine), the
# stage restores it from .gpu/pack.part-*, the first stage's pieces. Wheels in .whl/ (for a
# machine whose Python lacks soundfile or soxr) are installed first. EXTRA_PRETRAIN and
# EXTRA_FINETUNE add overrides (a dry run on a CPU: EXTRA_PRETRAIN="--pretrain.steps=4").
# PRETRAIN_LIMIT and FINETUNE_LIMIT (seconds; 450 and 470) interrupt the recipe's run so that
# it saves its last checkpoint (--resume continues it) and the stage still returns its files.
# PAIR=0 leaves the 10%-label run out (the recipe's run then has the GPU to itself).
# The figures in benchmarks/README.md are from 2026-11-29, when the recipe's model was width 192,
# depth 6 (pass --model.width=192 --model.depth=6 --model.heads=6 in EXTRA_* to repeat them).
set -uo pipefail
stage=${1:?pretrain or finetune}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
omni() { python3 -m omniformer.cli "$@"; }
config=configs/shapes-full.yaml
pair=(--label_fraction=0.1 --finetune.steps=4000 --finetune.curriculum_steps=700 --finetune.workers=5
      --finetune.progress=false)
clock() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$(clock) - $1:.1f}')"; }
make_data() {  # once, before the runs that read it start side by side
  local t; t=$(clock)
  python3 -c "
from omniformer.config import load_config
from omniformer.tasks.pipeline import ensure_data
ensure_data(load_config('$config'), progress=False)" || exit 1
  echo "data: $(elapsed "$t") s" | tee -a "$out/timing.txt"
}
pack() {  # pack FILES...: the checkpoints and logs, in pieces small enough to come back
  local found=() path
  for path in "$@"; do [ -e "$path" ] && found+=("$path"); done
  tar cf - "${found[@]}" | split -b 15M - "$out/pack.part-"
}

case $stage in
pretrain)
  nvidia-smi -L 2>/dev/null
  python3 -c "import torch, soundfile, soxr, tokenizers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
  make_data
  t=$(clock)
  timeout -s INT "${PRETRAIN_LIMIT:-450}" python3 -m omniformer.cli pretrain --config $config --pretrain.workers=8 --pretrain.progress=false ${EXTRA_PRETRAIN:-} \
    >"$out/pretrain.log" 2>&1 &
  main=$!
  if [ "${PAIR:-1}" != 0 ]; then
    omni finetune --config $config --out_dir=runs/full-scratch10 "${pair[@]}" ${EXTRA_FINETUNE:-} \
      >"$out/scratch10.log" 2>&1 &
    side=$!
    wait $side; echo "scratch at 10% labels: rc $? after $(elapsed "$t") s" | tee -a "$out/timing.txt"
  fi
  wait $main; rc=$?; echo "pretraining: rc $rc after $(elapsed "$t") s" | tee -a "$out/timing.txt"
  tail -n 3 "$out/pretrain.log"
  [ "${PAIR:-1}" != 0 ] &&
    omni evaluate --model runs/full-scratch10/qa/best --workers 12 --json "$out/scratch10_test.json" | tail -n 20
  pack runs/shapes-full/pretrain/last/{model.safetensors,config.json,tokenizer.json,trainer.json} \
    runs/shapes-full/pretrain/tb runs/full-scratch10/qa/best runs/full-scratch10/qa/tb
  exit $rc
  ;;
finetune)
  if [ ! -f runs/shapes-full/pretrain/last/model.safetensors ]; then
    echo "no pretraining checkpoint here: restoring it from .gpu/pack.part-*"
    cat .gpu/pack.part-* | tar xf - || exit 1
  fi
  make_data
  t=$(clock)
  timeout -s INT "${FINETUNE_LIMIT:-470}" python3 -m omniformer.cli finetune --config $config \
    --init runs/shapes-full/pretrain/last --finetune.workers=8 \
    --finetune.progress=false ${EXTRA_FINETUNE:-} >"$out/finetune.log" 2>&1 &
  main=$!
  if [ "${PAIR:-1}" != 0 ]; then
    omni finetune --config $config --out_dir=runs/full-pretrained10 --init runs/shapes-full/pretrain/last \
      "${pair[@]}" ${EXTRA_FINETUNE:-} >"$out/pretrained10.log" 2>&1 &
    side=$!
    wait $side; echo "pretrained at 10% labels: rc $? after $(elapsed "$t") s" | tee -a "$out/timing.txt"
  fi
  wait $main; rc=$?; echo "fine-tuning: rc $rc after $(elapsed "$t") s" | tee -a "$out/timing.txt"
  grep "^\[finetune\]" "$out/finetune.log" | cut -c1-200
  t=$(clock)
  omni evaluate --model runs/shapes-full/qa/best --workers 12 --json "$out/full_test.json" | tail -n 25
  echo "test evaluation: $(elapsed "$t") s" | tee -a "$out/timing.txt"
  [ "${PAIR:-1}" != 0 ] &&
    omni evaluate --model runs/full-pretrained10/qa/best --workers 12 --json "$out/pretrained10_test.json" | tail -n 8
  pack runs/shapes-full/qa/best runs/shapes-full/qa/tb runs/full-pretrained10/qa/best runs/full-pretrained10/qa/tb
  exit $rc
  ;;
*) echo "stage: pretrain or finetune, not $stage" >&2; exit 2 ;;
esac
