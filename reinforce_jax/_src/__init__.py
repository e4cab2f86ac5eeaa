"""Private helpers that every domain of the package shares: trace-time checks,
JAX-free number predicates, small-category sampling and lazy re-exports.

Nothing here is public API and nothing here imports another part of the package.
"""
