"""Everything a run needs before any actor starts: prompt files, tokenizer, and the warmed-up initial policy.

All of it is cached under ``output.cache_dir`` by a hash of the settings that shape it, so the second run with
the same task/model/warm-up settings starts from the cached checkpoint instead of re-training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import rlsys
from rlsys.config import RLConfig
from rlsys.data.model import build_tiny_llama
from rlsys.data.tasks import make_addition_rows, read_prompts, write_parquet
from rlsys.data.tokenizer import DEFAULT_ALPHABET, build_char_tokenizer
from rlsys.data.warmup import supervised_warmup
from rlsys.types import Prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    model_dir: str  # Hugging Face checkpoint (with tokenizer) of the initial policy
    train_file: str
    eval_file: str
    train_prompts: list[Prompt]
    eval_prompts: list[Prompt]
    warmup_cached: bool
    warmup_s: float


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def prepare_prompts(cfg: RLConfig, cache: Path) -> tuple[str, str]:
    """Paths of the train and held-out Parquet files (written once for the synthetic task)."""
    task = cfg.task
    if task.name == "parquet":
        if task.eval_file:
            return task.train_file, task.eval_file
        # No eval file: hold out num_eval rows of the train file, deterministically, as a separate file.
        prompts = read_prompts(task.train_file)
        if len(prompts) <= task.num_eval:
            raise ValueError(f"task.train_file has {len(prompts)} rows, not enough to hold out task.num_eval="
                             f"{task.num_eval}; lower task.num_eval or give task.eval_file")
        directory = cache / "data" / _digest(os.path.abspath(task.train_file), os.path.getmtime(task.train_file),
                                             task.num_eval, task.seed)
        random.Random(task.seed).shuffle(prompts)
        split = {"eval": prompts[: task.num_eval], "train": prompts[task.num_eval:]}
        paths = {}
        for name, rows in split.items():
            paths[name] = directory / f"{name}.parquet"
            if not paths[name].exists():
                write_parquet([{"id": p.prompt_id, "prompt": p.text, "answer": p.answer} for p in rows], paths[name])
        return str(paths["train"]), str(paths["eval"])
    directory = cache / "data" / _digest("addition", task.num_digits, task.num_train, task.num_eval, task.seed)
    train_path, eval_path = directory / "train.parquet", directory / "eval.parquet"
    if not (train_path.exists() and eval_path.exists()):
        eval_rows = make_addition_rows(task.num_digits, task.num_eval, task.seed)
        train_rows = make_addition_rows(task.num_digits, task.num_train, task.seed + 1,
                                        exclude={r["prompt"] for r in eval_rows})
        write_parquet(eval_rows, eval_path)
        write_parquet(train_rows, train_path)
    return str(train_path), str(eval_path)


def prepare(cfg: RLConfig) -> Prepared:
    cache = Path(cfg.output.cache_dir).expanduser()
    train_file, eval_file = prepare_prompts(cfg, cache)
    train_prompts, eval_prompts = read_prompts(train_file), read_prompts(eval_file)
    key = _digest(asdict(cfg.model), asdict(cfg.warmup), train_file, os.path.getmtime(train_file),
                  rlsys.__version__, transformers.__version__, torch.__version__)
    model_dir = cache / "models" / key
    if (model_dir / "config.json").exists():
        return Prepared(str(model_dir), train_file, eval_file, train_prompts, eval_prompts, True, 0.0)

    start = time.perf_counter()
    if cfg.model.path:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    else:
        alphabet = DEFAULT_ALPHABET + "".join(sorted({c for p in train_prompts for c in p.text + p.answer}))
        tokenizer = build_char_tokenizer(alphabet)
        model = build_tiny_llama(cfg.model, tokenizer)
    if cfg.warmup.steps:
        losses = supervised_warmup(model, tokenizer, train_prompts, cfg.warmup, seed=cfg.model.seed)
        log.info("warm-up: %d steps, loss %.3f → %.3f", cfg.warmup.steps, losses[0], losses[-1])
    tmp = model_dir.with_name(model_dir.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(model_dir)  # atomic: a concurrent run sees all of the checkpoint or none of it
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another run finished the same checkpoint first
    return Prepared(str(model_dir), train_file, eval_file, train_prompts, eval_prompts, False,
                    time.perf_counter() - start)
