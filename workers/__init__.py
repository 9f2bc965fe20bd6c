"""Worker pools: one per stage queue, sized from the seed's consumer table."""

from workers.profiles import POOLS, PoolProfile, combined, pool

__all__ = ["POOLS", "PoolProfile", "combined", "pool"]
