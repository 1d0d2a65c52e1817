"""bico: bidirectional and blank-infilling finetuning of Llama-style causal LMs.

Importing the package registers the ``"bico"`` attention implementation with transformers.
"""
from bico.attention import register as _register_attention

_register_attention()

__version__ = "0.1.0"
