"""Networks: AutoencoderKL / PatchDiscriminator factories and loading (incl. monai-generative state dicts, and the
training config a checkpoint holds), tiled encode/decode (``tiled``), the default device (``device``), the WGAN
generator and critic, and the two configurable decoders (``ConvDecoder``, ``ProgressiveDecoder``)."""

# decoders
from medgen.models.conv_decoder import ConvDecoder, ConvDecoderConfig  # noqa: F401
from medgen.models.layers import CropPad  # noqa: F401
from medgen.models.progressive_decoder import ProgressiveDecoder  # noqa: F401
# AutoencoderKL / PatchDiscriminator (VAE-GAN)
from medgen.models.autoencoder import build_autoencoder, build_discriminator, load_autoencoder  # noqa: F401
# WGAN-GP / GAN networks
from medgen.models.wgan import (  # noqa: F401
    DecoderGenerator,
    SelfAttention2d,
    WGANCritic,
    WGANGenerator,
    build_critic,
    build_generator,
)
