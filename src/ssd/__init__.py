"""ssd: speculative speculative decoding (Saguaro), speculative decoding and autoregressive
decoding as pure, exact step functions in PyTorch."""

from ssd.config import SamplingParams

__all__ = ["SamplingParams"]
__version__ = "0.1.0"
