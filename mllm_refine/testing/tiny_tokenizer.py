"""A word-level tokenizer built in memory, for tiny test models (no files, no network)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from mllm_refine.lazy import transformers

WORDS = (
    "a an the is are was were be there this that it its of in on at to from with and or not no yes "
    "what which who where when how many much color colour shape size count image picture photo "
    "red green blue yellow black white gray grey orange purple brown pink teal "
    "circle square triangle rectangle star dot line object objects thing things left right top bottom "
    "middle center corner big small large tiny one two three four five six seven eight nine ten "
    "cat dog car tree house person man woman sky sun water grass road sign text word number letter "
    "describe general description answer question short single please write give tell me you do does "
    "can see show has have any some all other same different than more less near far above below "
    "? . , : ! ' - USER ASSISTANT SYSTEM user assistant system"
).split()


def tiny_tokenizer(special_tokens: list[str], extra_words: tuple[str, ...] = ()) -> transformers.PreTrainedTokenizerFast:
    """Word-level tokenizer: ``special_tokens`` first (``<pad>``, ``<s>``, ``</s>``, ``<unk>`` are
    always added), then a fixed English word list. Placeholders such as ``<image>`` stay single
    tokens because they are special."""
    base = ["<pad>", "<s>", "</s>", "<unk>"]
    specials = base + [t for t in special_tokens if t not in base]
    vocab: dict[str, int] = {}
    for token in [*specials, *WORDS, *extra_words]:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": specials[4:]})
    return fast
