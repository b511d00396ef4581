"""A checkpoint's processor, built from only the parts that images and text need.

A processor such as ``Qwen2VLProcessor`` also takes a video processor, which transformers builds
only with torchvision. Decoding here never feeds videos, so when the full processor cannot be
built the same class is built without its other parts: the image processor (the PIL one when
torchvision is absent) and the tokenizer, with the checkpoint's chat template.
"""

from __future__ import annotations

from typing import Any

# The sub-processors a prompt with images needs; every other one (video, audio) is left out.
IMAGE_PARTS = ("image_processor", "tokenizer")


def image_only_class(processor_class: Any) -> Any:
    """``processor_class`` with only :data:`IMAGE_PARTS` as sub-processors, or ``None`` when it
    lacks one of them or has nothing else to leave out.

    transformers reads a processor's sub-processors from its ``__init__`` signature (which parts
    to load, which to save), so the subclass's signature names only the image parts and passes
    ``None`` for the rest."""
    attributes = processor_class.get_attributes()
    left_out = [a for a in attributes if a not in IMAGE_PARTS]
    if not left_out or not set(IMAGE_PARTS) <= set(attributes):
        return None

    def __init__(
        self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
    ) -> None:
        processor_class.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=chat_template,
            **dict.fromkeys(left_out),
            **kwargs,
        )

    # The original name, so that saving writes a ``processor_class`` any install can load.
    name = processor_class.__name__
    return type(name, (processor_class,), {"__init__": __init__, "__qualname__": name, "__module__": __name__})


def _processor_class(path: str, trust_remote_code: bool) -> Any:
    """The processor class transformers maps the checkpoint's model type to, if any."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    return PROCESSOR_MAPPING.get(type(config), None)


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    """The checkpoint's full processor; failing that (a video processor needs torchvision), the
    same processor class with only the image processor and tokenizer. Raises the error of the
    image-only attempt when both fail, since it is the one that says what images lack."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ImportError, OSError, ValueError, TypeError) as full:
        processor_class = _processor_class(path, trust_remote_code)
        image_only = image_only_class(processor_class) if processor_class is not None else None
        if image_only is None:
            raise
        try:
            return image_only.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (ImportError, OSError, ValueError, TypeError) as e:
            raise e from full
