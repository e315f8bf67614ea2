"""Pixel-space diffusion: EDM preconditioning around a U-Net, EDM loss, any sampler."""
