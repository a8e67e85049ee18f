"""Pooled primary + read replicas for Django: lag-aware routing, read-your-writes, failover."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
