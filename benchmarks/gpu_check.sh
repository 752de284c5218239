#!/usr/bin/env bash
# The GPU check: on a GPU machine, in about 7.5 minutes (12 with --compile), it runs
#   1. the training-step benchmarks, VAE-GAN and latent diffusion against the tutorial loops, fp32 and bf16, at
#      the shipped batch (8: a few milliseconds of small kernels a step, where queueing them decides the rate)
#      and at a batch that fills the GPU (VAE-GAN 256² x 32, LDM 64 latents), where bf16's tensor cores show, and
#      the 3D VAE-GAN (64³ x 2); the modes graphs / graphs_bf16 are cuda_graphs=true,
#   2. a 1-GPU torchrun DDP training run with nccl on demo data,
#   3. the host-sync test with torch.cuda.set_sync_debug_mode("error") around every step,
#   4. tiled reconstruct of a 2943x1435 image with its peak GPU memory,
#   5. the CUDA-graph test (cuda_graphs=true trains to eager mode's weights; the steps above run it as mode graphs),
#   6. with --compile, the compiled steps (compile, compile + bf16) of both benchmarks at the shipped batch,
# and writes one JSON per part under benchmarks/results/ (*_cuda.json) plus gpu_check_cuda.json (exit code and
# seconds of each part, rewritten after every part, so that a run stopped half way still says what it did).
#
#   benchmarks/gpu_check.sh [--compile]  # on a GPU machine, from anywhere
#   benchmarks/gpu_check.sh --only ldm_step,cuda_graphs  # only the parts named (a rerun of what changed)
#   benchmarks/gpu_check.sh --dry-run    # (also without a GPU) parts 1-4 end to end on the CPU at tiny sizes, the
#                                        # GPU-only settings (nccl, sync debug mode, CUDA memory) left out; results
#                                        # go to $OUT_DIR (default: a new temporary folder), never over the recorded ones
# PYTHON names the interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=0; COMPILE=0; ONLY=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --compile) COMPILE=1 ;;
        --only) ONLY=",${2:?gpu_check: --only needs part names, e.g. --only ldm_step,host_syncs},"; shift ;;
        *) echo "gpu_check: unknown option $1 (options: --dry-run, --compile, --only PART,...)" >&2; exit 2 ;;
    esac
    shift
done
if [[ $DRY == 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no GPU here; running the dry mode" >&2
    DRY=1
fi
if [[ $DRY == 1 ]]; then
    DEV=cpu; TAG=dry; OUT=${OUT_DIR:-$(mktemp -d)}
    VAE_ARGS=(--size 32 --batch 2 --channels [8,8,8] --steps 1 --rounds 1 --diff-steps 2 --modes fp32,bf16)
    LDM_ARGS=(--latent-size 8 --batch 2 --channels [8,8,8] --steps 1 --rounds 1 --diff-steps 2 --modes fp32,bf16 --profile)
    DDP_SETS=(--set backend=gloo --set autoencoder_train.patch_size=[32,32] --set autoencoder_def.channels=[8,16]
              --set autoencoder_def.norm_num_groups=4 --set autoencoder_def.attention_levels=[false,true]
              --set discriminator_def.channels=8 --set autoencoder_train.perceptual_weight=0)
    VAE_LARGE=(); LDM_LARGE=()
    SYNC_K="vae and not clip"; TILED_SHAPE=64x96; PART_TIMEOUT=300; DEMO_COUNT=4; EPOCHS=1
else
    DEV=cuda; TAG=cuda; OUT=${OUT_DIR:-benchmarks/results}
    VAE_ARGS=(--size 128 --batch 8 --channels [64,128,128] --steps 20 --rounds 4 --diff-steps 5 --modes fp32,bf16,graphs,graphs_bf16)
    LDM_ARGS=(--latent-size 64 --batch 8 --channels [128,256,256] --steps 20 --rounds 4 --diff-steps 5 --modes fp32,bf16,graphs,graphs_bf16 --profile)
    DDP_SETS=(--set backend=nccl --set autoencoder_train.patch_size=[128,128] --set autoencoder_train.perceptual_weight=0)
    VAE_LARGE=(--size 256 --batch 32 --channels [64,128,128] --steps 10 --rounds 3 --diff-steps 3 --modes fp32,bf16,graphs_bf16)
    LDM_LARGE=(--latent-size 64 --batch 64 --channels [128,256,256] --steps 10 --rounds 3 --diff-steps 3 --modes fp32,bf16,graphs_bf16)
    SYNC_K=""; TILED_SHAPE=1435x2943; PART_TIMEOUT=120; DEMO_COUNT=16; EPOCHS=2
fi
mkdir -p "$OUT"
WORK=$(mktemp -d)
declare -A STATUS

PARTS=()
summary() {  # gpu_check_$TAG.json: what ran so far
    {
        echo "{\"device\": \"$DEV\", \"dry_run\": $([[ $DRY == 1 ]] && echo true || echo false), \"seconds\": $SECONDS, \"parts\": {"
        local first=1 name
        for name in "${PARTS[@]}"; do
            [[ $first == 1 ]] || echo ","
            first=0
            echo -n "  \"$name\": ${STATUS[$name]}"
        done
        echo ""
        echo "}}"
    } > "$OUT/gpu_check_$TAG.json"
}

part() {  # part NAME COMMAND...: run it under the time limit, record ok / failed (exit code)
    local name=$1; shift
    [[ -z $ONLY || $ONLY == *",$name,"* ]] || return 0
    local start=$SECONDS
    echo "== $name: $*" >&2
    timeout "${LIMIT:-$PART_TIMEOUT}" "$@"
    local rc=$?
    PARTS+=("$name")
    STATUS[$name]="{\"exit_code\": $rc, \"seconds\": $((SECONDS - start))}"
    echo "== $name: exit $rc in $((SECONDS - start)) s" >&2
    summary
}

part vae_step "$PY" benchmarks/bench_train_step.py --device "$DEV" "${VAE_ARGS[@]}" --json "$OUT/train_step_$TAG.json"
part ldm_step "$PY" benchmarks/bench_ldm_step.py --device "$DEV" "${LDM_ARGS[@]}" --json "$OUT/ldm_step_$TAG.json"
if [[ $DRY == 0 ]]; then
    part vae_step_large "$PY" benchmarks/bench_train_step.py --device "$DEV" "${VAE_LARGE[@]}" --json "$OUT/train_step_large_$TAG.json"
    part ldm_step_large "$PY" benchmarks/bench_ldm_step.py --device "$DEV" "${LDM_LARGE[@]}" --json "$OUT/ldm_step_large_$TAG.json"
    part vae_step_3d "$PY" benchmarks/bench_train_step.py --device "$DEV" --spatial-dims 3 --size 64 --batch 2 \
        --channels [32,64,64] --steps 5 --rounds 3 --diff-steps 3 --modes fp32,bf16,graphs,graphs_bf16 --json "$OUT/train_step_3d_$TAG.json"
fi

"$PY" -c "import sys; from medgen.cli import main; sys.exit(main(sys.argv[1:]))" demo-data "$WORK/demo" --spatial-dims 2 \
    --count "$DEMO_COUNT" --size 160 --seed 0 >/dev/null
part ddp_1gpu "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 scripts/train_vae.py vae_config.json \
    --set data_base_dir="$WORK/demo" --set run_dir="$WORK/ddp" --set num_workers=2 --set scan_workers=0 \
    --set autoencoder_train.max_epochs="$EPOCHS" --set autoencoder_train.batch_size=2 --set log_interval=2 "${DDP_SETS[@]}"

if [[ $DRY == 1 ]]; then
    part host_syncs "$PY" -m pytest -q -p no:cacheprovider tests/test_host_syncs.py -k "$SYNC_K"
else
    part host_syncs env MEDGEN_SYNC_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_host_syncs.py
fi

if [[ $DRY == 0 ]]; then
    part cuda_graphs "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py
fi

LIMIT=180 part tiled_reconstruct "$PY" benchmarks/bench_tiled.py --device "$DEV" --only 2d --shapes "$TILED_SHAPE" \
    --whole-timeout 60 --timeout 120 --json "$OUT/tiled_check_$TAG.json"

if [[ $DRY == 0 && $COMPILE == 1 ]]; then  # compiling takes longest: last, against the same fp32 and tutorial steps
    LIMIT=200 part vae_compile "$PY" benchmarks/bench_train_step.py --device "$DEV" "${VAE_ARGS[@]}" \
        --modes fp32,compile,compile_bf16 --json "$OUT/train_step_compile_$TAG.json"
    LIMIT=200 part ldm_compile "$PY" benchmarks/bench_ldm_step.py --device "$DEV" "${LDM_ARGS[@]}" \
        --modes fp32,compile,compile_bf16 --json "$OUT/ldm_step_compile_$TAG.json"
fi
rm -rf "$WORK"
echo "gpu_check: results in $OUT (gpu_check_$TAG.json: exit code and seconds per part)" >&2
for name in "${PARTS[@]}"; do
    [[ ${STATUS[$name]} == '{"exit_code": 0,'* ]] || { echo "gpu_check: $name failed" >&2; exit 1; }
done
