#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, on one CUDA GPU, each part's log written as it runs:
#
#   bash bench/gpu.sh                      # all parts, logs under outputs/bench-gpu
#   bash bench/gpu.sh DIR generate train   # only these parts, logs under DIR
#
# Parts (minutes on an H100, compilation included):
#   generate  ~4  generation: ours compiled (CUDA graphs) vs no cache vs HF generate(), batch 1 and 32
#   train     ~4  training step: Lightning vs plain loop vs HF GPT-2, compiled, bf16-mixed, 16 x 1024
#   run       ~3  python train.py with gpt2-124m on the built-in corpus: tokens/s, MFU, peak memory
set -uo pipefail
out=${1:-outputs/bench-gpu}
shift || true
parts=${*:-generate train run}
py=${PYTHON:-python}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$out/device.txt" 2>&1

for part in $parts; do
  case $part in
    generate)
      $py -m bench.generate_throughput --preset gpt2-124m --block-size 1024 --dtype bfloat16 --compile true \
        --batch 1 32 --no-cache-batches 1 --repeats 2 --plot kv-cache-gpu && cp docs/images/kv-cache-gpu.png "$out/" ;;
    train)
      $py -m bench.train_throughput --preset gpt2-124m --batch 16 --steps 30 --warmup 10 ;;
    run)
      $py train.py model=gpt2-124m trainer=gpu trainer.max_steps=80 trainer.val_check_interval=1000 \
        callbacks.throughput.every_n_steps=10 trainer.log_every_n_steps=10 paths.output_dir="$out/run"
      $py -c "import csv, sys; rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get('train/mfu')]
print('\n'.join(f\"step {r['step']}: {float(r['train/tokens_per_sec']):,.0f} tokens/s, MFU {float(r['train/mfu']):.1%}, \"
                f\"peak {float(r['train/peak_memory_gb']):.1f} GB\" for r in rows))" "$out/run/csv/metrics.csv" ;;
    *) echo "unknown part: $part (generate, train, run)" >&2; exit 2 ;;
  esac 2>&1 | tee "$out/$part.txt"
done
