"""ssd: speculative speculative decoding (Saguaro), speculative decoding and autoregressive
decoding as pure, exact step functions in PyTorch."""

from ssd.config import SamplingParams
from ssd.engine.requests import RequestOutput
from ssd.llm import LLM

__all__ = ["LLM", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"
