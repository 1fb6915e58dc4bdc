"""Package list only (metadata lives in pyproject.toml). The kernels are the subpackage ``hf_seqmodels/kernels``: a
top-level ``kernels/`` source folder would shadow the kernel-hub library ``kernels`` (which transformers >= 5.25
requires and imports) in every process started from the repository root."""

from setuptools import find_packages, setup

packages = ["hf_seqmodels"] + [f"hf_seqmodels.{p}" for p in find_packages("hf_seqmodels")]
packages += ["hf_seqmodels.model_cards"]

setup(packages=packages)
