"""A tiny random Qwen2 chat model, built locally in seconds, for tests and CPU benchmarks without a model hub.

What it is for: exercising the real stack (transformers forwards, vLLM engines, OpenRLHF's engine actors) with a model whose
architecture, tokenizer and chat template look like a real chat model's, at about 140 k parameters. Its weights are random,
so the text is noise and EOS comes at an arbitrary, seed-dependent rate; use ``ignore_eos=True`` for exact lengths.

Recipe (CPU_ENV.md, "Models without a hub"):

1. about 3,000 sentences from a small word list, made-up names and numbers, from ``random.Random(seed)``;
2. a byte-level BPE tokenizer trained on them (``tokenizers``), vocabulary 1,024, with ``<|endoftext|>`` (BOS),
   ``<|im_start|>``, ``<|im_end|>`` (EOS) and ``<|pad|>``, wrapped as ``PreTrainedTokenizerFast`` with a ChatML template;
3. ``Qwen2ForCausalLM``: hidden 64, intermediate 128, 2 layers, 2 heads of size 32 (a head size the vLLM CPU attention
   backend supports), 1 KV head, 1,024 positions, tied embeddings, float32 safetensors, initialised under
   ``torch.manual_seed(seed)`` (in a forked RNG, so the caller's torch RNG is untouched).

The same seed gives byte-identical files. A finished build writes a stamp last; a folder with a matching stamp is reused
without importing torch.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_model"]

# Bump when the recipe changes, so stamped folders built by an older recipe are rebuilt.
_RECIPE_VERSION = 2
_STAMP = ".openrlhf_darts_tiny.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

BOS, IM_START, EOS, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, IM_START, EOS, PAD)
VOCAB_SIZE = 1024
NUM_SENTENCES = 3000

# ChatML, as Qwen2 uses it; add_generation_prompt opens the assistant turn the model is asked to complete.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SUBJECTS = ("the cat", "a dog", "my friend", "the teacher", "a robot", "the farmer", "our team", "she", "he")
_VERBS = ("sees", "counts", "buys", "finds", "adds", "takes", "gives", "writes", "reads", "moves", "sells", "plants")
_OBJECTS = ("apples", "books", "stones", "coins", "trees", "boxes", "letters", "numbers", "cups", "birds", "cards")
_PLACES = ("in the garden", "at school", "on the table", "near the river", "in the market", "at home", "on the hill")
_EXTRA = ("today", "again", "slowly", "quickly", "every day", "before noon", "after lunch", "with care")
_OPS = (("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b))
# Made-up names from syllables. The Qwen2 pre-tokenizer isolates every digit, so numbers add no merges; without these
# names the word list alone would stop BPE at about 470 tokens instead of the 1,024 a realistic vocabulary needs.
_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ra",
    "te",
    "su",
    "no",
    "vi",
    "da",
    "pe",
    "ro",
    "ba",
    "li",
    "zu",
    "ma",
    "ne",
    "to",
    "ga",
)
_NUM_NAME_DRAWS = 600


def _names(rng: random.Random) -> list[str]:
    drawn = {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(_NUM_NAME_DRAWS)}
    return [name.capitalize() for name in sorted(drawn)]


def _sentence(rng: random.Random, names: list[str]) -> str:
    kind = rng.random()
    if kind < 0.3:
        # Arithmetic, so the text looks like the math prompts the rollout benchmarks use.
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op_name, op = rng.choice(_OPS)
        return f"What is {a} {op_name} {b}? The answer is {op(a, b)}."
    subject = rng.choice(names) if kind < 0.7 else rng.choice(_SUBJECTS)
    words = [subject, rng.choice(_VERBS), str(rng.randint(1, 999)), rng.choice(_OBJECTS)]
    if rng.random() < 0.6:
        words.append(rng.choice(_PLACES))
    if rng.random() < 0.4:
        words.append(rng.choice(_EXTRA))
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice((".", ".", "!", "?"))


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    names = _names(rng)
    return [_sentence(rng, names) for _ in range(NUM_SENTENCES)]


def _stamp(seed: int) -> dict[str, int]:
    return {"recipe": _RECIPE_VERSION, "seed": seed}


def _is_built(out_dir: Path, seed: int) -> bool:
    stamp = out_dir / _STAMP
    if not stamp.is_file() or not all((out_dir / name).is_file() for name in _REQUIRED_FILES):
        return False
    try:
        return json.loads(stamp.read_text()) == _stamp(seed)
    except (OSError, ValueError):
        return False


def _build(tmp_dir: Path, seed: int) -> None:
    """Write tokenizer and model files into ``tmp_dir``. Heavy imports live here so a reused folder costs none."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # --- tokenizer: byte-level BPE, so any text (including the chat template's newlines) round-trips ---
    # transformers (and so vLLM) load a qwen2 folder with Qwen2Tokenizer, which rebuilds the normalizer and pre-tokenizer
    # from its own constants (NFC, a regex split that isolates every digit, byte level). Training with exactly that pipeline
    # keeps the saved tokenizer.json and the loaded tokenizer in agreement on every id.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[IM_START],
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(tmp_dir)

    # --- model: random Qwen2 whose vocabulary is exactly the tokenizer's ---
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    # fork_rng: seed the initialisation without changing the caller's global torch RNG state (tests share a process).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp_dir)


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0) -> str:
    """Build the tiny Qwen2 chat model into ``out_dir`` (created if needed) and return its path as a string.

    Skipped when ``out_dir`` already holds a complete build of the same seed and recipe. Files are written into a
    temporary sibling folder and moved in one by one with ``os.replace``, stamp last, so a reader never sees a stamped but
    half-written folder and concurrent builders of the same seed (identical bytes) cannot corrupt each other.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} has type {type(seed).__name__}; expected an int")
    out = Path(out_dir).expanduser().resolve()
    if _is_built(out, seed):
        return str(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _STAMP).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=out.parent))
    try:
        _build(tmp, seed)
        for item in sorted(tmp.iterdir()):
            os.replace(item, out / item.name)
        (tmp / _STAMP).write_text(json.dumps(_stamp(seed)))
        os.replace(tmp / _STAMP, out / _STAMP)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
