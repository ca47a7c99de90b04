"""Tiny models for tests (and benchmarks/train.py): a tokenizer trained in milliseconds and a small random
Gemma 3 checkpoint with the default base model's architecture. Test fixtures, not production code."""

from __future__ import annotations

import os
from pathlib import Path

from garden_assets.llm.models import load_tokenizer

_TOKENIZER_CORPUS = """
Below is an instruction that describes a task. Write a response that appropriately completes the request.
### Instruction: ### Response: ### End Input: Knowing this context: Answer the question:
How often should I water tomatoes in a raised bed? Water deeply once or twice a week, more in hot weather.
Why are the leaves of my basil turning yellow? Usually overwatering or poor drainage; let the soil dry out.
When is the best time to prune apple trees? Late winter, while the tree is dormant and before buds open.
Compost needs a mix of green and brown material, air and moisture. Turn the pile every few weeks.
Mulch keeps the soil cool and moist and suppresses weeds. Slugs, aphids and mildew are common garden pests.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 ? ! . , ; : ' " ( ) [ ] - _ / + = * % & # @
"""


def build_small_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in milliseconds (encodes any text; Gemma-like special token ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, the order Gemma uses
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS.splitlines() * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_random_model(
    out_dir: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a small random Gemma 3 checkpoint (same architecture as the default base model) for tests.

    ``tokenizer_dir``: reuse a real tokenizer (e.g. the converted Gemma one, 262k vocab — then the output layer
    is as wide as the real model's); default: `build_small_tokenizer` (512 tokens, no files needed).
    """
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    out = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir else build_small_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden_size // 2,
        max_position_embeddings=max_positions,
        sliding_window=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
