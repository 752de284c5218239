"""Training: one trainer skeleton and one small module per method.

- ``base``: :class:`~medgen.training.base.Trainer` (epoch loop, validation cadence and its scalars, optimisers
  with schedules and loss scalers, gradient accumulation, EMA, non-finite steps, stop signals, run info,
  TensorBoard) and :func:`~medgen.training.base.launch`, which every training command goes through.
- ``checkpointer``: what a checkpoint holds, writing and reading it, resume rules.
- ``methods``: the table of methods (``METHODS``, :func:`~medgen.training.methods.trainer_for`); each trainer
  class declares its own facts (config class, sub-command, checked input size, pretrained networks).
- ``vae``: the VAE-GAN (AutoencoderKL + PatchDiscriminator); ``wgan``: WGAN-GP and GAN; ``ldm``: latent
  diffusion in a frozen autoencoder's latent space.
- ``data_check``: the launcher's data step (find items, check them once, stop or skip bad files).
- ``distributed``: torchrun ranks, process group, rank-0 helpers.
- ``images``: TensorBoard image grids (tri-planar for volumes).
- ``fit_decoder``: fitting a ProgressiveDecoder to one radiograph to denoise or inpaint it (``medgen fit-decoder``).
"""
