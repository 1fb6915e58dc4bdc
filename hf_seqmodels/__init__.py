"""hf-seqmodels: efficient non-Transformer sequence models as a Hugging Face Transformers plugin."""
__version__ = "0.1.0"
