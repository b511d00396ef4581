"""Tools for testing mllm-refine and its plugins: tiny models of every family, the conformance kit."""

# Overrides that point a shipped recipe (embedded model, easy-VQA) at the tiny random LLaVA and
# the in-memory shapes data, so a test runs it end to end in seconds.
TINY_RUN: tuple[str, ...] = ("model.path=tiny-llava", "data={name: shapes, n: 32}")
