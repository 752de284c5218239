"""Using trained networks: reconstruct/encode with an autoencoder, sample a WGAN/GAN, fit a decoder to one image.

- ``autoencoder``: ``medgen reconstruct`` (sliding windows) and ``medgen encode`` (latents + scale factor);
  the bundles' inference network.
- ``sample``: images from a WGAN/GAN checkpoint (``medgen sample``).
- ``fit_decoder``: denoising / inpainting one radiograph with a ProgressiveDecoder (``medgen fit-decoder``).
"""
