"""mllm-refine: training-free decoding strategies for multimodal LLMs, as composable plugins."""

__version__ = "0.1.0"
