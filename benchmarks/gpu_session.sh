#!/usr/bin/env bash
# One lent GPU's session (issue 16 part 4 and the GPU correctness checks), prepared so its minutes are not lost.
# Each part is time-boxed and independent: a failure is logged and the next part runs. Everything lands in $OUT.
#
#   device run, carry [".whl"]:  bash benchmarks/gpu_session.sh
#   here, a CPU rehearsal:       OUT=/tmp/gs EKD_DRY=1 bash benchmarks/gpu_session.sh
#
# .whl holds liger-kernel (the head benchmark's peer), which the device image lacks:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     liger-kernel==0.8.5
set -u
OUT=${OUT:?set OUT to the results folder}
DRY=${EKD_DRY:-}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && [ -z "$DRY" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:src:.
else
  export PYTHONPATH=src:.
fi
mkdir -p "$OUT"
LOG=$OUT/session.log
WORK=$(mktemp -d)  # the demo, runs and cache: this session's own (two rehearsals on one host do not meet)
part() { echo; echo "=== $1 ($(date +%T))"; }
{
  part "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  $PY -c "import torch, transformers, sys; print(sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

  part "1. head + step + model probes (benchmarks.gpu_check)"
  timeout 240 $PY -m benchmarks.gpu_check ${DRY:+--dry} --out "$OUT"; echo "rc=$?"

  part "2. the CUDA tests"
  timeout 120 $PY -m pytest -q -p no:cacheprovider -p no:warnings tests/test_precision.py \
    tests/test_host_memory.py tests/test_exact_probes.py; echo "rc=$?"

  part "3. ekd demo --quick --no-tasks (run.device=auto: the GPU, bf16 autocast)"
  timeout 200 $PY -m ekd demo --quick --no-tasks --out $WORK/demo; echo "rc=$?"
  find $WORK/demo -maxdepth 1 -name '*.md' -exec cp {} "$OUT/" \; 2>/dev/null

  part "4. torchrun, 1 process (an NCCL group of one rank), sekd, compiled loss, from the demo's student-init (train.parallel=fsdp is a no-op with one process: ekd says so)"
  DEMO="model.student=$WORK/demo/student-init model.teacher=$WORK/demo/teacher \
    model.tokenizer=$WORK/demo/teacher run.output_dir=$WORK/runs data.block_length=96 \
    data.max_chars=1500000 data.max_eval_blocks=16 ${DRY:+run.device=cpu}"
  timeout 150 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m ekd distill configs/demo.yaml \
    $DEMO run.name=fsdp1 train.parallel=fsdp method=sekd train.max_steps=20 train.warmup_steps=0 \
    train.compile=true; echo "rc=$?"

  part "5. torchrun, 1 process: the fsdp/cpu_offload/shard settings are accepted and said to be no-ops with one process (FSDP2 needs 2 GPUs)"
  timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m ekd distill configs/demo.yaml \
    $DEMO run.name=offload1 train.parallel=fsdp train.cpu_offload=true teacher.placement=shard method=kd \
    train.max_steps=10 train.warmup_steps=0; echo "rc=$?"

  part "6. torchrun, 1 process, DDP, egad (dual-branch logits + feature KD, per-token temperature)"
  timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m ekd distill configs/demo.yaml \
    $DEMO run.name=egad1 method=egad train.max_steps=10 train.warmup_steps=0; echo "rc=$?"

  part "7. RS cache build on the GPU (throughput vs the teacher's forward-only), then sekd3x from it"
  timeout 120 $PY -m ekd cache configs/cache-demo.yaml $DEMO teacher.cache_dir=$WORK/cache; echo "rc=$?"
  timeout 120 $PY -m ekd distill configs/cache-demo.yaml $DEMO teacher.cache_dir=$WORK/cache run.name=sekd3x \
    method=sekd3x teacher.source=cache train.max_steps=20 train.warmup_steps=0; echo "rc=$?"

  part "8. where the cache build's time goes on the GPU (issue 16 part 3: 0.35x forward-only on the H200)"
  timeout 120 $PY -m benchmarks.cache_phases --rounds 5 --device "$([ -n "$DRY" ] && echo cpu || echo cuda)"
  echo "rc=$?"
  rm -rf "$WORK"
  part "end"
} 2>&1 | tee "$LOG"
