"""Tools for testing mllm-refine and its plugins: tiny models of every family."""
