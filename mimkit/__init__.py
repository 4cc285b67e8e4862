"""mimkit: masked image and video modeling on timm ViTs with PyTorch Lightning."""

__version__ = "0.1.0"
