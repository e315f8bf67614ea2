"""limner.models.diffusion"""
