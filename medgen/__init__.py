"""medgen: generative models for dental radiographs and CBCT on MONAI and PyTorch."""

__version__ = "0.1.0"
