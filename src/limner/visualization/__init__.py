"""Visualization: turn image tensors into figures (grids, plots), nothing more."""

from limner.visualization.grids import make_grid, save_grid

__all__ = ["make_grid", "save_grid"]
