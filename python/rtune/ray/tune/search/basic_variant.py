"""ray.tune.search.basic_variant."""

from . import BasicVariantGenerator

__all__ = ["BasicVariantGenerator"]
