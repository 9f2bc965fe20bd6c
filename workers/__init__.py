"""Worker pools: one per worker queue of a topology, sized from its pool table."""

from workers.profiles import combined, pool

__all__ = ["combined", "pool"]
