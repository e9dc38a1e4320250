"""Loss-landscape analysis of any checkpoint: Hessian spectrum (this package's hessian/spectrum modules)."""
from .hessian import HessianOperator
from .spectrum import DensityResult, EigenResult, spectral_density, top_eigenvalues
from .trace import TraceResult, hessian_trace

__all__ = ["HessianOperator", "top_eigenvalues", "hessian_trace", "spectral_density", "EigenResult",
           "TraceResult", "DensityResult"]

# Loss surfaces (directions.py, surface.py); their figures are landscape.plots's (presentation stands above).
from .directions import (DirectionSet, eigen_directions, interpolation_direction, orthogonalize, pca_directions,
                         random_direction, random_directions)
from .surface import SurfaceResult, load_surface, loss_surface, parse_grid
from .samples import SampleSet
from .flatness import FlatnessResult, average_loss_increase, worst_case_loss_increase
from .input_space import InputSurfaceResult, input_curvature, input_surface

__all__ += ["DirectionSet", "random_direction", "random_directions", "orthogonalize", "eigen_directions",
            "interpolation_direction", "pca_directions", "SurfaceResult", "loss_surface", "load_surface",
            "parse_grid", "SampleSet", "FlatnessResult", "average_loss_increase", "worst_case_loss_increase",
            "InputSurfaceResult", "input_surface", "input_curvature"]
