"""catalens: visual product search over a product catalog."""

from catalens.errors import CatalensError
from catalens.types import Hit, ModelIdentity, Product, ValidationReport

__version__ = "0.1.0"

__all__ = ["CatalensError", "Hit", "ModelIdentity", "Product", "ValidationReport", "__version__"]
