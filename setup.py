"""Package list only (metadata lives in pyproject.toml): the top-level ``kernels/`` folder installs as the
subpackage ``hf_seqmodels.kernels`` and never as a top-level ``kernels`` module (that name is the HF kernel hub's)."""
from setuptools import find_packages, setup

packages = ["hf_seqmodels"] + [f"hf_seqmodels.{p}" for p in find_packages("hf_seqmodels")]
packages += ["hf_seqmodels.kernels"] + [f"hf_seqmodels.kernels.{p}" for p in find_packages("kernels")]
packages += ["hf_seqmodels.model_cards"]

setup(packages=packages)
