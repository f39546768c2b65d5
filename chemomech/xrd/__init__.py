"""X-ray line-profile analysis: dislocation densities and slip systems from powder peaks.

Stroh contrast factors (`contrast`), the candidate slip systems of LiFePO4 (`slip`), pattern
readers (`patterns`), peak windows and the instrument profile (`peaks`), the variance method
(`variance`), NNLS over slip systems (`fit`), figures (`plots`), a forward model for
verification (`synthetic`) and the `chemomech xrd` driver (`config.run_xrd`).  NumPy, SciPy
and Matplotlib only (no DOLFINx).
"""

from chemomech.mechanics.slip import TABLE1_SYSTEMS, SlipSystem, slip_systems
from chemomech.xrd.contrast import (
    average_contrast_factor,
    average_contrast_factors,
    contrast_factor,
    isotropic_edge_contrast,
    isotropic_screw_contrast,
)
from chemomech.xrd.slip import design_matrix

__all__ = [
    "TABLE1_SYSTEMS",
    "SlipSystem",
    "average_contrast_factor",
    "average_contrast_factors",
    "contrast_factor",
    "design_matrix",
    "isotropic_edge_contrast",
    "isotropic_screw_contrast",
    "slip_systems",
]
