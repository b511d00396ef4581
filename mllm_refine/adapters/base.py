"""A model adapter: where a family keeps its decoder blocks, final norm, lm_head and image tokens.

Methods never name a model class; they talk to the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, cast

from mllm_refine.adapters.image_free import image_free
from mllm_refine.components.base import ModelInfo
from mllm_refine.data.sample import Sample
from mllm_refine.lazy import nn, torch

if TYPE_CHECKING:
    from transformers import BatchFeature


class ModelAdapter:
    """Generic adapter for ``*ForConditionalGeneration`` models of transformers 5.

    Subclasses set ``name``, ``model_types`` (``config.model_type`` values) and
    ``image_token_attrs`` (config attributes that hold image placeholder token ids).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "adapter"
    model_types: ClassVar[tuple[str, ...]] = ()
    model_classes: ClassVar[tuple[str, ...]] = ()  # for error messages and docs
    image_token_attrs: ClassVar[tuple[str, ...]] = ("image_token_id",)
    # Per grid of one image, in order: extra tokens that end each of its rows (LLaVA-NeXT's newline).
    row_end_tokens: ClassVar[tuple[int, ...]] = (0,)

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model: Any = model  # a transformers model: submodules, config and generation helpers are read by name
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._info: ModelInfo | None = None

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(model.config, "model_type", None) in cls.model_types

    # --- where things live -------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return cast(nn.ModuleList, self.language_model.layers)

    @property
    def final_norm(self) -> nn.Module:
        return cast(nn.Module, self.language_model.norm)

    @property
    def lm_head(self) -> nn.Linear:
        return cast(nn.Linear, self.model.lm_head)

    @property
    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    def attention_module(self, layer: int) -> nn.Module:
        """The self-attention module of block ``layer`` (1..L)."""
        return cast(nn.Module, self.decoder_layers[layer - 1].self_attn)

    def info(self) -> ModelInfo:
        """The language model's shape, built once: every step's view reads it."""
        if self._info is None:
            self._info = self._build_info()
        return self._info

    def _build_info(self) -> ModelInfo:
        c = self.text_config
        return ModelInfo(
            num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads,
            num_kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            hidden_size=c.hidden_size,
            vocab_size=self.lm_head.out_features,
            family=self.name,
            tied_embeddings=self.lm_head.weight is self.model.get_input_embeddings().weight,
        )

    # --- image tokens --------------------------------------------------------------------
    @property
    def image_token_ids(self) -> list[int]:
        ids = [getattr(self.model.config, a, None) for a in self.image_token_attrs]
        return [i for i in ids if i is not None]

    def image_keys(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool: prompt positions that hold image tokens."""
        ids = torch.tensor(self.image_token_ids, device=input_ids.device)
        return torch.isin(input_ids, ids)

    # --- image grids ----------------------------------------------------------------------
    def image_grid(self, inputs: Mapping[str, torch.Tensor]) -> list[list[tuple[int, int]]]:
        """Per sample, the ``(rows, cols)`` grid of each block of its image tokens, in token order.

        ``inputs`` is a batch from ``prepare``. Each image gives ``len(row_end_tokens)`` grids, and
        a sample's image tokens (see ``image_keys``) run through its images' grids one after
        another. A grid is filled row-major; the j-th grid of a sample has
        ``n = row_end_tokens[j % len(row_end_tokens)]`` extra tokens (not cells) after each row,
        so grid ``(r, c)`` spans ``r * (c + n)`` tokens. The families' docstrings say what the
        grids are.
        """
        per_image = self.grids_of_images(inputs)  # batch images in order -> their grids
        tokens = [sum(r * (c + n) for (r, c), n in zip(grids, self.row_end_tokens)) for grids in per_image]
        counts = self.image_keys(inputs["input_ids"]).sum(1).tolist()  # (B,) image tokens per sample
        out, i = [], 0
        for b, count in enumerate(counts):
            grids: list[tuple[int, int]] = []
            while count > 0 and i < len(per_image):
                grids += per_image[i]
                count -= tokens[i]
                i += 1
            if count != 0:
                raise ValueError(f"sample {b}: its image tokens do not add up to whole images of the batch")
            out.append(grids)
        if i != len(per_image):
            raise ValueError(f"{len(per_image) - i} image(s) of the batch have no image tokens in the prompts")
        return out

    def grids_of_images(self, inputs: Mapping[str, torch.Tensor]) -> list[list[tuple[int, int]]]:
        """For each image of the batch, in order, its grids (the per-family part of ``image_grid``)."""
        raise NotImplementedError(
            f"adapter {self.name!r} does not describe its image-token grid: implement grids_of_images"
        )

    # --- inputs ----------------------------------------------------------------------------
    def prompt(self, sample: Sample) -> str:
        content: list[dict[str, Any]] = [{"type": "image"} for _ in sample.images]
        content.append({"type": "text", "text": sample.question})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def question_last(self, samples: list[Sample], input_ids: torch.Tensor) -> torch.Tensor:
        """``(B,)`` long: where each sample's last question token sits in ``input_ids`` (B, T), a
        left-padded batch from ``prepare``.

        Family-independent: the sample's prompt text is tokenised alone (as the processor does,
        special tokens included) and the tokens after the one holding the question's last
        character are counted; the chat template's tail (the assistant header) follows the
        question and image tokens expand only before it, so that count from the end of the row
        holds in ``input_ids`` too. A token that merges the question's last character with the
        template's next one (``?\n``) is the question's last token.
        """
        after = []
        for sample in samples:
            text, question = self.prompt(sample), sample.question.strip()
            start = text.rfind(question)
            if not question or start < 0:
                raise ValueError(f"sample {sample.id}: its question does not appear in its prompt text")
            end = start + len(question)  # one past the question's last character
            spans = self.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
            last = max(i for i, (a, b) in enumerate(spans) if a < end and b > a)  # empty spans: special tokens
            after.append(len(spans) - 1 - last)
        return input_ids.shape[1] - 1 - torch.tensor(after, dtype=torch.long, device=input_ids.device)

    def prepare(self, samples: list[Sample]) -> BatchFeature:
        """Model inputs for a batch, left padded (the tokenizer's own side is restored after)."""
        texts = [self.prompt(s) for s in samples]
        images = [list(s.images) for s in samples]
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"
        try:
            if not any(images):
                return self.processor(text=texts, return_tensors="pt", padding=True)
            return self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        finally:
            self.tokenizer.padding_side = side

    def model_inputs(self, samples: list[Sample], pixel_grad: bool = False) -> BatchFeature:
        """``prepare``'d inputs on the model's device, pixels in the model's dtype: the one
        preparation the answer pass and every extra pass share. ``pixel_grad``: ``pixel_values``
        is a leaf that requires grad (ViCrop's pure-grad map)."""
        inputs = self.prepare(samples).to(self.model.device)
        pixels = inputs.get("pixel_values")
        if pixels is not None and pixels.is_floating_point():
            inputs["pixel_values"] = pixels.to(self.model.dtype)
            if pixel_grad:
                inputs["pixel_values"].requires_grad_()
        return inputs

    def without_images(
        self, inputs: Mapping[str, torch.Tensor], samples: list[Sample], prompt: Literal["strip", "template"] = "strip"
    ) -> BatchFeature:
        """The batch with no images (``adapters.image_free``): ``strip`` cuts each prompt's image
        markup out, ``template`` rebuilds each sample's prompt without its images."""
        return image_free(inputs, samples, self, prompt)
