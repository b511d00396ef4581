"""The Lightning predict loop: a module that decodes, a data module that resumes, a shard writer."""

from mllm_refine.lightning.data import RecipeData, build_dataset
from mllm_refine.lightning.module import RefineModule
from mllm_refine.lightning.shards import MergeError, merge
from mllm_refine.lightning.trainer import TrainerConfig, trainer_config
from mllm_refine.lightning.writer import ShardWriter

__all__ = ["MergeError", "RecipeData", "RefineModule", "ShardWriter", "TrainerConfig", "build_dataset", "merge", "trainer_config"]
