#!/bin/bash
# Latent diffusion on the public panoramics, as README "From autoencoder to synthetic radiographs" reports it:
# the 2D recipe autoencoder (whole images resized to 256x256), a class-conditional LDM on its 64x64x4 latents,
# then bench_sampling.py realism against the held-out split. CPU budgets: AE_TIME + LDM_TIME (+ ~11 min).
#
#   benchmarks/ldm_public.sh public_data/panoramic /tmp/ldm_public           # the reported run
#   SUBSET=20 benchmarks/ldm_public.sh public_data/panoramic /tmp/ldm_public # the LDM on 20 training images
#
# DATA holds train/{dente,edente} and val/{dente,edente} (scripts/prepare_public_data.py). SUBSET=N trains the
# LDM on N training images (N/2 per class, evenly spaced in file-name order, linked under OUT/subset_N) with
# the same autoencoder, for the copy-share-against-set-size measurement; it skips the realism benchmark.
# LDM_SET adds --set overrides to the LDM run (e.g. "--set ldm_train.max_epochs=330 --set max_time=null").
set -euo pipefail
DATA=${1:?usage: ldm_public.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: ldm_public.sh DATA_DIR OUT_DIR}
BIN=${BIN:-.venv/bin}
AE_TIME=${AE_TIME:-00:10:00}
LDM_TIME=${LDM_TIME:-00:22:00}
VAL_INTERVAL=${VAL_INTERVAL:-5}
mkdir -p "$OUT"
DATA=$(cd "$DATA" && pwd)

if [ ! -f "$OUT/vae/checkpoints/best.pt" ]; then
  "$BIN/python" scripts/train_vae.py configs/radiograph_2d.json --set data_base_dir="$DATA/train" --set val_dir="$DATA/val" \
    --set run_dir="$OUT/vae" --set max_time="$AE_TIME" --set patch_mode=resize --set autoencoder_train.patch_size=[256,256] \
    --set num_workers=0 --set num_val_images=2 --set autoencoder_train.val_interval=10 --set autoencoder_train.perceptual_weight=0
fi

TRAIN="$DATA/train"
RUN="$OUT/ldm"
if [ -n "${SUBSET:-}" ]; then
  TRAIN="$OUT/subset_$SUBSET"
  RUN="$OUT/ldm_subset_$SUBSET"
  for c in dente edente; do
    mkdir -p "$TRAIN/$c"
    ls "$DATA/train/$c" | sort | awk -v k=$((SUBSET / 2)) '{f[NR]=$0} END {for (i = 0; i < k; i++) print f[1 + int(i * NR / k)]}' |
      while read -r f; do ln -sf "$DATA/train/$c/$f" "$TRAIN/$c/$f"; done
  done
fi

"$BIN/python" scripts/train_ldm.py ldm_config.json --set data_base_dir="$TRAIN" --set val_dir="$DATA/val" \
  --set run_dir="$RUN" --set autoencoder_checkpoint="$OUT/vae/checkpoints/best.pt" --set max_time="$LDM_TIME" \
  --set diffusion_def.channels=[32,64,128] --set diffusion_def.attention_levels=[false,false,true] \
  --set diffusion_def.num_res_blocks=1 --set diffusion_def.num_head_channels=32 --set diffusion_def.norm_num_groups=16 \
  --set ldm_train.latent_patch_size=[64,64] --set ldm_train.batch_size=8 --set ldm_train.max_epochs=100000 \
  --set ldm_train.lr=5e-4 --set ldm_train.lr_scheduler=constant --set ldm_train.ema_decay=0.995 \
  --set ldm_train.num_inference_steps=20 --set ldm_train.val_interval="$VAL_INTERVAL" --set num_val_images=2 \
  --set checkpoint_interval=1 --set num_workers=0 --set log_interval=20 ${LDM_SET:-}

if [ -z "${SUBSET:-}" ]; then
  "$BIN/python" benchmarks/bench_sampling.py realism --ddpm-checkpoint "$RUN/checkpoints/last.pt" --holdout "$DATA/val" \
    --count 16 --batch-size 16 --scales 0 1 3 5 --steps 20 --json benchmarks/results/realism_public.json \
    --figure benchmarks/results/realism_public.png
fi
