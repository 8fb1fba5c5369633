"""dehaze-harness: adapt image-dehazing networks from synthetic to real haze, and benchmark them."""

__version__ = "0.1.0"
