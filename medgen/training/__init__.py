"""Training: one trainer skeleton and one small module per method.

- ``base``: :class:`~medgen.training.base.Trainer` (epoch loop, validation cadence, checkpoints, resume, run
  info, TensorBoard) and the launcher every training command goes through.
- ``vae``: the VAE-GAN (AutoencoderKL + PatchDiscriminator); ``wgan``: WGAN-GP and GAN.
- ``data_check``: the launcher's data step (find items, check them once, stop or skip bad files).
- ``distributed``: torchrun ranks, process group, rank-0 helpers.
- ``images``: TensorBoard image grids (tri-planar for volumes).
- ``fit_decoder``: fitting a ProgressiveDecoder to one radiograph to denoise or inpaint it (``medgen fit-decoder``).
"""
