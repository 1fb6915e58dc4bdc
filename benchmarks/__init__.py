"""Benchmarks, and the offline tools they share with the tests (``benchmarks.lib``).

Each benchmark runs as a module from the repository root, e.g. ``python -m benchmarks.gpu_suite --device cpu --tiny``;
the tests import them the same way (``import benchmarks.gla_static``). This package is not installed with
hf_seqmodels.
"""
