"""The decode engine."""

from mllm_refine.engine.config import DecodeConfig
from mllm_refine.engine.decoder import Decoder, Prediction
from mllm_refine.engine.parts import ConflictError, Parts
from mllm_refine.engine.step_view import StepView

__all__ = ["ConflictError", "DecodeConfig", "Decoder", "Parts", "Prediction", "StepView"]
