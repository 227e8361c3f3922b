"""sap-rl: Stochastic Activation Pruning and adversarial robustness for agents and classifiers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sap-rl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
