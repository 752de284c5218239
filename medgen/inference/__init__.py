"""Using trained networks: reconstruct/encode/decode with an autoencoder, sample, check samples for copies.

- ``autoencoder``: ``medgen reconstruct``, ``encode`` (latent files of :mod:`medgen.data.latents` + scale factor)
  and ``decode``, whole images in tiles (:mod:`medgen.models.tiled`).
- ``inputs``: the images (or latent files) those commands read, and the names their outputs get.
- ``sample``: images from a WGAN/GAN or latent diffusion checkpoint (``medgen sample``).
- ``check_copies``: ``medgen check-copies``, samples against the training images (the measure is
  :mod:`medgen.metrics.copies`).

Fitting a decoder to one image (``medgen fit-decoder``) trains, so it lives in :mod:`medgen.training.fit_decoder`;
the bundles' inference network is :class:`medgen.models.autoencoder.ReconstructionAutoencoderKL`.
"""
