"""Loss-landscape analysis of any checkpoint: Hessian spectrum (this package's hessian/spectrum modules)."""
from .hessian import HessianOperator
from .spectrum import DensityResult, EigenResult, spectral_density, top_eigenvalues
from .trace import TraceResult, hessian_trace

__all__ = ["HessianOperator", "top_eigenvalues", "hessian_trace", "spectral_density", "EigenResult",
           "TraceResult", "DensityResult"]

# Loss surfaces (directions.py, surface.py); plots.py imports matplotlib, so its names load on first use.
from .directions import (DirectionSet, eigen_directions, interpolation_direction, orthogonalize, pca_directions,
                         random_direction, random_directions)
from .surface import SurfaceResult, load_surface, loss_surface, parse_grid
from .samples import SampleSet
from .flatness import (FlatnessResult, average_loss_increase, average_sharpness, worst_case_loss_increase,
                       worst_case_sharpness)
from .input_space import InputSurfaceResult, input_curvature, input_surface

_PLOTS = ("plot_result", "plot_curve", "plot_contour", "plot_contourf", "plot_surface3d", "plot_compare",
          "plot_density", "plot_eigenvalues", "plot_spectrum", "plot_sharpness", "plot_training", "plot_input_surface")
__all__ += ["DirectionSet", "random_direction", "random_directions", "orthogonalize", "eigen_directions",
            "interpolation_direction", "pca_directions", "SurfaceResult", "loss_surface", "load_surface",
            "parse_grid", "SampleSet", "FlatnessResult", "average_loss_increase", "worst_case_loss_increase",
            "average_sharpness", "worst_case_sharpness", "InputSurfaceResult", "input_surface", "input_curvature",
            *_PLOTS]


def __getattr__(name: str):
    if name in _PLOTS:
        from . import plots
        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
