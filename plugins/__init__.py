"""The decoding methods shipped with mllm-refine, one module each, registered as plugins."""
