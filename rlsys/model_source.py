"""Getting the initial checkpoint to actors on any node, and loading a checkpoint with errors that name it.

The driver prepares the checkpoint on its own disk. Actors on the same node (or on shared storage) read that
path; an actor on a node where the path does not exist materialises the files from the object store, where
the driver put them once (:func:`pack`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ray

from rlsys.config import ConfigError

PACK_LIMIT_BYTES = 2 << 30  # larger checkpoints must be on storage every node mounts


def pack(model_dir: str) -> list:
    """[ref to {relative path: bytes}] — the ref wrapped in a list so Ray does not fetch it unless needed.

    Empty on a single-node cluster, where every actor reads the path itself."""
    if len([n for n in ray.nodes() if n.get("Alive")]) <= 1:
        return []
    files = [p for p in Path(model_dir).rglob("*") if p.is_file()]
    if sum(p.stat().st_size for p in files) > PACK_LIMIT_BYTES:
        return []
    return [ray.put({str(p.relative_to(model_dir)): p.read_bytes() for p in files})]


def local_model_dir(model_dir: str, packed: list) -> str:
    """``model_dir`` if this node can read it, else a local copy made from the packed files."""
    if os.path.isdir(model_dir):
        return model_dir
    if not packed:
        raise FileNotFoundError(f"checkpoint {model_dir!r} is not on this node and is too large to ship through "
                                "the object store; put output.cache_dir / model.path on storage every node mounts")
    target = Path(tempfile.mkdtemp(prefix="rlsys-model-"))
    for rel, data in ray.get(packed[0]).items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_bytes(data)
    return str(target)


def load_checkpoint_part(auto: type, key: str, path: str, part: str, **kwargs):
    """``auto.from_pretrained(path)``; a checkpoint that does not load is a :class:`ConfigError` naming ``key``,
    the path and the part (tokenizer, config.json, weights) rather than a traceback from deep in transformers.
    For the weights, parameters the files do not hold (which transformers would leave randomly initialised, e.g.
    for a config.json naming another architecture) are an error too, and so are NaN or infinite weights."""
    weights = part == "weights"
    try:
        loaded = auto.from_pretrained(path, **kwargs, **({"output_loading_info": True} if weights else {}))
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, json errors... for a broken file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"{key}={path!r}: its {part} could not be loaded ({type(e).__name__}: {first[:300]})") from e
    if not weights:
        return loaded
    model, info = loaded
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ConfigError(f"{key}={path!r}: its weights do not fit its config.json ({model.config.model_type}): "
                          f"{len(missing)} parameters are missing from the files, e.g. {', '.join(missing[:3])}")
    # NaN or inf in the weights makes every loss NaN from the first step; say so at load, naming the tensors.
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise ConfigError(f"{key}={path!r}: its weights hold NaN or infinite values, in {len(bad)} tensors, e.g. "
                          f"{', '.join(bad[:3])}")
    return model


def ensure_pad_token(tokenizer, what: str):
    """``tokenizer``, given a pad token if it has none: its EOS token, as checkpoints without one are commonly padded.

    Safe here because no part of rlsys tells padding from tokens by id: attention and loss masks come from sequence
    lengths (:func:`rlsys.engines.padding.pad_sequences`) and a response ends at its first EOS, so a pad that is
    also EOS cannot enter a loss mask or cut a response short. Raises :class:`ConfigError` naming ``what`` (the
    checkpoint) when the tokenizer has neither a pad nor an EOS token."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"the tokenizer of {what} has neither a pad nor an EOS token; add a pad token "
                              "(tokenizer.add_special_tokens({'pad_token': ...})) and save it again")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def end_token_ids(eos_token_id: int | None, generation_config=None) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS, and each ``eos_token_id`` (an int or a list) of the
    checkpoint's ``generation_config.json`` — instruct checkpoints end a turn with a token of their own (e.g.
    ``<|im_end|>``, ``<|eot_id|>``) that is often not the tokenizer's EOS. Empty: nothing ends a response early."""
    declared = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    declared = declared if isinstance(declared, list | tuple) else [declared]
    return list(dict.fromkeys(int(i) for i in [eos_token_id, *declared] if i is not None))


def check_reads_policy_tokens(tokenizer, policy: str, key: str, path: str) -> None:
    """Refuse a checkpoint at config ``key`` (``model.reference_path``, ``model.critic_path``) that cannot read the
    policy's token ids: its tokenizer must map every token to the id the policy's (``tokenizer``, of ``policy``)
    does, and its embedding must have a row for each. A KL or a value taken on ids that mean other tokens to the
    model is a number, but not the one meant, so this is a :class:`ConfigError` naming both and the first tokens
    that differ. Reads only the tokenizer files and config.json (no weights)."""
    from transformers import AutoConfig, AutoTokenizer

    theirs = load_checkpoint_part(AutoTokenizer, key, path, "tokenizer").get_vocab()
    ours = tokenizer.get_vocab()
    if theirs != ours:
        differ = sorted({t for t in ours.keys() | theirs.keys() if ours.get(t) != theirs.get(t)},
                        key=lambda t: min(ours.get(t, 1 << 62), theirs.get(t, 1 << 62)))
        shown = ", ".join(f"{t!r}: {ours.get(t)} vs {theirs.get(t)}" for t in differ[:3])
        raise ConfigError(f"{key}={path!r} has another tokenizer than {policy} ({len(theirs)} tokens against "
                          f"{len(ours)}; {len(differ)} tokens have other ids, e.g. {shown}): it scores the policy's "
                          "token ids, so it must share the policy's tokenizer; give a checkpoint of the same model "
                          "family and tokenizer")
    config = load_checkpoint_part(AutoConfig, key, path, "config.json")
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    rows = getattr(config, "vocab_size", None)
    if rows is not None and rows < len(tokenizer):
        raise ConfigError(f"{key}={path!r}: its embedding has {rows} rows (vocab_size in config.json) for the "
                          f"{len(tokenizer)} tokens of the policy's tokenizer")
