"""TensorBoard image grids and console helpers."""

from medgen.logging.images import as_2d, comparison_grid, tri_planar
