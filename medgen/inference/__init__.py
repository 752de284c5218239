"""Using trained networks: reconstruct/encode with an autoencoder, sample a WGAN/GAN, fit a decoder to one image.

- ``autoencoder``: ``medgen reconstruct``, ``encode`` (latents + scale factor) and ``decode``, whole images
  in tiles (:mod:`medgen.models.tiled`); the bundles' inference network.
- ``sample``: images from a WGAN/GAN checkpoint (``medgen sample``).
- ``fit_decoder``: denoising / inpainting one radiograph with a ProgressiveDecoder (``medgen fit-decoder``).
"""
