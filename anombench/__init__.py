"""anombench: a plugin-based benchmarking harness for visual anomaly detection and localization."""

from anombench.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
