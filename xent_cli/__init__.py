"""xent: derive, evaluate and verify the softmax cross-entropy loss and its gradient."""

__version__ = "0.1.0"
