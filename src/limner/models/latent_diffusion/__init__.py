"""Latent diffusion: the pixel diffusion family's model on a frozen VAE's scaled latents.

Reference: Rombach et al. 2022 (latent diffusion models).
"""
