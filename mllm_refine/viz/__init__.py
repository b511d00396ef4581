"""See what the model sees: a diagnostic pass through the engine, plots, and an HTML page.

``mllm-refine inspect`` is the command; ``inspect_recipe`` does the work. Plots need matplotlib
(``pip install 'mllm-refine[viz]'``), imported only when a plot is drawn; the capture and the
numbers do not.
"""

from mllm_refine.viz.capture import StepRecord, Trace, diagnostic_decoder, diagnostic_needs, trace
from mllm_refine.viz.inspector import inspect_recipe, load_sample
from mllm_refine.viz.numbers import step_numbers

__all__ = [
    "StepRecord",
    "Trace",
    "diagnostic_decoder",
    "diagnostic_needs",
    "inspect_recipe",
    "load_sample",
    "step_numbers",
    "trace",
]
