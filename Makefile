# medgen: `make demo` trains on synthetic demo data, `make test` runs the test suite.
# GPU users: TORCH can name another build, e.g. `make demo TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# one process per GPU when there are GPUs, else 2 CPU processes
NPROC ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | wc -l); [ "$$n" -gt 0 ] && echo $$n || echo 2)
DEMO_DIR ?= demo_data
DEMO_RUN ?= runs/demo
BIN := $(VENV)/bin
STAMP := $(VENV)/.medgen-installed

.PHONY: demo demo-3d demo-ldm test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,dicom]"
	touch $(STAMP)

# A small autoencoder (downsampling 2, 2 latent channels: half the values of the image), 64x64 patches, 85 short
# epochs with a cosine learning-rate decay; reconstruction + KL only (the perceptual network's weights are not
# shipped, and the adversarial term sharpens only after far longer training): a few minutes on 2 CPU cores.
DEMO_SET := --set data_base_dir=$(DEMO_DIR) --set run_dir=$(DEMO_RUN) --set data_source=both \
	--set autoencoder_def.channels=[32,64] --set autoencoder_def.norm_num_groups=16 \
	--set autoencoder_def.num_res_blocks=1 --set autoencoder_def.latent_channels=2 \
	--set autoencoder_def.attention_levels=[false,true] \
	--set autoencoder_train.patch_size=[64,64] --set autoencoder_train.batch_size=4 \
	--set autoencoder_train.max_epochs=85 --set autoencoder_train.val_interval=10 --set autoencoder_train.lr=1e-3 \
	--set autoencoder_train.lr_scheduler=cosine --set autoencoder_train.perceptual_weight=0.0 \
	--set autoencoder_train.adv_warmup_epochs=85 --set discriminator_def.channels=16 \
	--set checkpoint_interval=10 --set num_workers=0

demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(BIN)/medgen demo-data $(DEMO_DIR) --spatial-dims 2 --count 22 --size 96 --seed 0
	$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) scripts/train_vae.py vae_config.json $(DEMO_SET)
	@echo "Done. Checkpoints: $(DEMO_RUN)/checkpoints  TensorBoard: $(BIN)/tensorboard --logdir $(DEMO_RUN)"

# Latent diffusion on the demo autoencoder's latents (run `make demo` first; it is run here when its checkpoint is
# missing): a small class-conditional UNet on the whole 48x48 latents of the 96x96 demo images, trained as a
# rectified flow, then 8 samples of each class (50 flow steps, guidance 3) as PNG and the copy check of each class
# against the training images (exit 1 on a copy or on samples unlike every training image). Rectified flow, not
# DDPM: the same UNet and data trained with DDPM (250 epochs) gave noise or saturated blobs for half the seeds.
DEMO_LDM_RUN ?= runs/demo_ldm
DEMO_SAMPLES ?= samples/demo_ldm
DEMO_LDM_EPOCHS ?= 150
DEMO_LDM_SET := --set data_base_dir=$(DEMO_DIR) --set run_dir=$(DEMO_LDM_RUN) \
	--set autoencoder_checkpoint=$(DEMO_RUN)/checkpoints/best.pt \
	--set diffusion_def.channels=[16,32,32] --set diffusion_def.attention_levels=[false,false,true] \
	--set diffusion_def.num_res_blocks=1 --set diffusion_def.num_head_channels=16 --set diffusion_def.norm_num_groups=8 \
	--set ldm_train.latent_patch_size=[48,48] --set ldm_train.batch_size=8 --set patches_per_image=4 \
	--set ldm_train.max_epochs=$(DEMO_LDM_EPOCHS) --set ldm_train.lr=5e-4 --set ldm_train.lr_scheduler=cosine \
	--set ldm_train.ema_decay=0.995 --set ldm_train.num_inference_steps=50 --set ldm_train.val_interval=50 \
	--set checkpoint_interval=10 --set num_workers=0 --set log_interval=20 --set ldm_train.scheduler=rflow

demo-ldm: $(STAMP)
	test -f $(DEMO_RUN)/checkpoints/best.pt || $(MAKE) demo
	rm -rf $(DEMO_LDM_RUN) $(DEMO_SAMPLES)
	$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) scripts/train_ldm.py ldm_config.json $(DEMO_LDM_SET)
	for c in dente edente; do \
	  $(BIN)/medgen sample --checkpoint $(DEMO_LDM_RUN)/checkpoints/last.pt --class $$c --count 8 --batch-size 8 \
	    --guidance 3 --format png --output $(DEMO_SAMPLES)/$$c || exit 1; \
	  $(BIN)/medgen check-copies --samples $(DEMO_SAMPLES)/$$c --train $(DEMO_LDM_RUN)/config.json || exit 1; \
	done
	@echo "Done. Samples: $(DEMO_SAMPLES)/{dente,edente} (copy checks in $(DEMO_SAMPLES)/<class>_copy_check)  TensorBoard: $(BIN)/tensorboard --logdir $(DEMO_LDM_RUN)"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(DEMO_DIR) $(DEMO_RUN) $(DEMO_LDM_RUN) $(DEMO_SAMPLES)
