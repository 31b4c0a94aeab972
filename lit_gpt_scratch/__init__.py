"""lit-gpt-scratch: a GPT built and trained from scratch with PyTorch Lightning."""

__version__ = "0.1.0"
