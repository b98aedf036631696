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
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

import rlsys
from rlsys.config import FILE_TASKS, SCORER_PATHS, ConfigError, RLConfig
from rlsys.data.chat import PromptFormat
from rlsys.data.checks import BadRow, DatasetError, check_tokens, in_file_order, require_usable, settle
from rlsys.data.model import build_tiny_llama
from rlsys.data.tasks import Rows, make_arithmetic_rows, prompt_row, read_rows, write_parquet
from rlsys.data.tokenizer import DEFAULT_ALPHABET, build_char_tokenizer
from rlsys.data.warmup import supervised_warmup
from rlsys.envs import env_stop_strings, make_env
from rlsys.model_source import check_reads_policy_tokens, ensure_pad_token, load_checkpoint_part
from rlsys.types import Prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    model_dir: str  # Hugging Face checkpoint (with tokenizer) of the initial policy
    train_file: str
    eval_file: str
    train_prompts: list[Prompt]  # the usable rows only (task.bad_rows=drop leaves the bad ones out)
    eval_prompts: list[Prompt]
    warmup_cached: bool
    warmup_s: float
    dropped_rows: dict[str, int] = field(default_factory=dict)  # reason → rows left out (task.bad_rows=drop)
    dropped: list[BadRow] = field(default_factory=list)  # each row left out: .file, .row, .reason, .detail


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class _Split:
    """One dataset of the run: what messages call it, the file the run reads, and its checked rows."""

    label: str  # "task.train_file /data/mine.parquet"
    path: Path  # the file the run reads (for a held-out split: written under the cache from ``data``)
    data: Rows  # the usable prompts with their rows in the file they came from; the bad rows found so far
    held_out: bool = False  # ``path`` is written from ``data`` once the checks pass

    def bad_of(self, bad: list[BadRow]) -> list[BadRow]:
        """The rows of ``bad`` that belong to this dataset."""
        rows, own = set(self.data.rows), set(self.data.bad)
        return [b for b in bad if b.file == self.data.file and (b.row in rows or b in own)]


def _read_splits(cfg: RLConfig, cache: Path) -> tuple[_Split, _Split]:
    """The train and eval datasets, read and cell-checked; nothing is written for a held-out split yet."""
    task = cfg.task
    if task.name in FILE_TASKS:  # the user's files: prompt rows, or GSM8K's question/answer rows
        layout = "gsm8k" if task.name == "gsm8k" else "prompt"
        train_path = Path(task.train_file).expanduser()
        if task.eval_file:
            eval_path = Path(task.eval_file).expanduser()
            return (_Split(f"task.train_file {train_path}", train_path, read_rows(train_path, layout)),
                    _Split(f"task.eval_file {eval_path}", eval_path, read_rows(eval_path, layout)))
        # No eval file: hold out num_eval usable rows of the train file, deterministically, as separate Parquet
        # files of prompt rows (a GSM8K row's reference already taken from its solution).
        source = read_rows(train_path, layout)
        label = f"task.train_file {train_path}"
        usable = len(source.prompts)
        if task.bad_rows == "drop" or not source.bad:  # (fail: the bad rows are reported with the token checks')
            require_usable(label, usable, source.bad, usable + len(source.bad))
            if usable <= task.num_eval:
                left = f" ({len(source.bad)} bad rows left out)" if source.bad else ""
                raise DatasetError(f"task.train_file has {usable} usable rows{left}, not enough to hold out "
                                   f"task.num_eval={task.num_eval}; lower task.num_eval or give task.eval_file")
        order = list(range(usable))
        random.Random(task.seed).shuffle(order)
        # Rows left out change the split: they are part of its name (none left out: the name is as it always was),
        # and so does a layout other than prompt rows (the same file read another way gives other rows).
        dropped = [[b.row for b in source.bad]] if source.bad else []
        other_layout = [layout] if layout != "prompt" else []
        directory = cache / "data" / _digest(os.path.abspath(train_path), os.path.getmtime(train_path),
                                             task.num_eval, task.seed, *dropped, *other_layout)
        train = replace(source.subset(order[task.num_eval:]), bad=source.bad)  # the file's bad rows: train's
        return (_Split(label, directory / "train.parquet", train, held_out=True),
                _Split(f"the eval split held out from {label} (task.num_eval={task.num_eval})",
                       directory / "eval.parquet", source.subset(order[: task.num_eval]), held_out=True))
    kind = [] if task.name == "synthetic_addition" else [task.name]  # the addition task's cache key as it was
    directory = cache / "data" / _digest("addition", task.num_digits, task.num_train, task.num_eval, task.seed, *kind)
    train_path, eval_path = directory / "train.parquet", directory / "eval.parquet"
    if not (train_path.exists() and eval_path.exists()):
        eval_rows = make_arithmetic_rows(task.num_digits, task.num_eval, task.seed, task=task.name)
        train_rows = make_arithmetic_rows(task.num_digits, task.num_train, task.seed + 1,
                                          exclude={r["prompt"] for r in eval_rows}, task=task.name)
        write_parquet(eval_rows, eval_path)
        write_parquet(train_rows, train_path)
    return (_Split(f"the synthetic train split {train_path}", train_path, read_rows(train_path)),
            _Split(f"the synthetic eval split {eval_path} (task.num_eval={task.num_eval})", eval_path,
                   read_rows(eval_path)))


def _settle(cfg: RLConfig, splits: tuple[_Split, ...], bad: list[BadRow]) -> tuple[list[list[Prompt]], dict]:
    """Apply task.bad_rows to ``bad`` (fail: raise them all; drop: log them); the usable prompts of each split (none
    may be empty), and the count per reason of the rows left out. Held-out split files are written here."""
    counts = settle(bad, cfg.task.bad_rows)
    kept = []
    for split in splits:
        prompts = split.data.without(bad)
        mine = split.bad_of(bad)
        require_usable(split.label, len(prompts), mine, len(split.data.prompts) + len(split.data.bad))
        kept.append(prompts)
        if split.held_out and not split.path.exists():  # a conversation keeps its turns
            write_parquet([prompt_row(p) for p in split.data.prompts], split.path)
    return kept, counts


def _policy_tokenizer(cfg: RLConfig, train_prompts: list[Prompt]) -> tuple[PreTrainedTokenizerBase, int | None, str]:
    """The policy's tokenizer, its context length (None if its config names none) and where that comes from."""
    if cfg.model.path:
        tokenizer = ensure_pad_token(load_checkpoint_part(AutoTokenizer, "model.path", cfg.model.path, "tokenizer"),
                                     f"model.path={cfg.model.path!r}")
        if tokenizer.eos_token_id is None:
            log.warning("the tokenizer of model.path=%r has no EOS token: no response can end before "
                        "rollout.max_new_tokens (finish reason 'length')", cfg.model.path)
        config = load_checkpoint_part(AutoConfig, "model.path", cfg.model.path, "config.json")
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        context = getattr(config, "max_position_embeddings", None)
        return tokenizer, context, f"max_position_embeddings of {cfg.model.path}"
    # The tiny default's vocabulary is the alphabet of its training data (and of the environment's demonstrations and
    # stop strings): only eval rows, and observations, can hold unknown characters.
    texts = [t for p in train_prompts for t in (p.text, p.answer, *(c for _, c in p.messages))]
    texts += [t for turns in demonstrations(cfg, train_prompts) or [] for t in turns]
    if cfg.env.enabled:
        texts += env_stop_strings(cfg.env.name, cfg.env.params)
    alphabet = DEFAULT_ALPHABET + "".join(sorted(set("".join(texts) + (cfg.task.prompt_template or ""))))
    return build_char_tokenizer(alphabet), cfg.model.max_position_embeddings, "model.max_position_embeddings"


def demonstrations(cfg: RLConfig, prompts: list[Prompt]) -> list[list[str]] | None:
    """The environment's worked trajectories for the supervised warm-up, one per prompt (drawn with
    ``model.seed``), where ``env.name`` is set and the environment has a ``demonstration`` method; else None."""
    if not cfg.env.enabled:
        return None
    env = make_env(cfg.env.name, cfg.env.params)
    demonstrate = getattr(env, "demonstration", None)
    if not callable(demonstrate):
        return None
    rng = random.Random(cfg.model.seed)
    return [list(demonstrate(p, rng)) for p in prompts]


def _token_checks(cfg: RLConfig, splits: tuple[_Split, ...], fmt: PromptFormat, context: int | None,
                  source: str) -> list[BadRow]:
    new_tokens = cfg.rollout.max_new_tokens
    if context is None:
        log.warning("the policy's config has no max_position_embeddings: prompt lengths are not checked")
        limit, note = None, ""
    else:
        limit, note = context - new_tokens, f"{source}={context} minus rollout.max_new_tokens={new_tokens}"
        if limit < 1:
            raise ConfigError(f"rollout.max_new_tokens={new_tokens} leaves no room for a prompt in the policy's "
                              f"context ({source}={context}); lower rollout.max_new_tokens")
    return [b for s in splits for b in check_tokens(s.data.file, s.data.rows, s.data.prompts, fmt, limit, note,
                                                       show_ids=s.data.has_ids)]


@dataclass(frozen=True)
class Datasets:
    """The checked datasets of a run and the policy tokenizer they were checked with (:func:`load_datasets`)."""

    train_file: str
    eval_file: str
    train_prompts: list[Prompt]
    eval_prompts: list[Prompt]
    tokenizer: PreTrainedTokenizerBase
    prompt_format: PromptFormat  # how prompts were encoded for the checks, and are for everything after them
    dropped_rows: dict[str, int]  # reason → rows left out (task.bad_rows=drop)
    dropped: list[BadRow]
    train_left_out: list[int]  # rows of the train file left out (they change what the warm-up trains on)


def load_datasets(cfg: RLConfig) -> Datasets:
    """Read and check the train and eval datasets — cell checks as the files are read, token checks (length, unknown
    characters) with the policy's tokenizer — and apply ``task.bad_rows``. Cheap (no model weights are loaded): run
    it before Ray starts, so bad data fails in seconds. Raises :class:`~rlsys.data.checks.DatasetError`."""
    cache = Path(cfg.output.cache_dir).expanduser()
    splits = _read_splits(cfg, cache)
    tokenizer, context, source = _policy_tokenizer(cfg, splits[0].data.prompts)
    policy = f"model.path={cfg.model.path!r}" if cfg.model.path else "the policy"
    fmt = PromptFormat.of(tokenizer, cfg.task, policy)
    for key in SCORER_PATHS:
        if path := getattr(cfg.model, key):
            check_reads_policy_tokens(tokenizer, policy, f"model.{key}", path)
    cell_bad = [b for s in splits for b in s.data.bad]
    bad = in_file_order(cell_bad + _token_checks(cfg, splits, fmt, context, source))
    (train_prompts, eval_prompts), dropped_rows = _settle(cfg, splits, bad)
    if cfg.env.enabled and train_prompts:  # a template without the observation role fails here, not at a turn
        fmt.observation_ids(train_prompts[0], "", cfg.env.observation_role)
    seen = {p.text for p in train_prompts}
    if overlap := sum(p.text in seen for p in eval_prompts):
        log.warning("%d of the %d held-out prompts (%s) also occur in the training data (%s): held-out accuracy "
                    "partly measures the training data", overlap, len(eval_prompts), splits[1].label, splits[0].label)
    return Datasets(str(splits[0].path), str(splits[1].path), train_prompts, eval_prompts, tokenizer, fmt,
                    dropped_rows, bad, sorted(b.row for b in splits[0].bad_of(bad)))


def prepare(cfg: RLConfig, data: Datasets | None = None) -> Prepared:
    """Check the datasets (:func:`load_datasets`, unless ``data`` is given), then build (or find cached) the
    warmed-up initial policy."""
    data = data or load_datasets(cfg)
    cache = Path(cfg.output.cache_dir).expanduser()
    tokenizer, train_prompts, train_file = data.tokenizer, data.train_prompts, data.train_file
    # The warm-up trains on the usable train rows: rows left out are part of the key (none: the key is unchanged).
    left_out = [data.train_left_out] if data.train_left_out else []
    # A target accuracy is checked on the held-out prompts with rollout.max_new_tokens: both shape the result.
    target = [data.eval_file, os.path.getmtime(data.eval_file), cfg.rollout.max_new_tokens] \
        if cfg.warmup.target_accuracy > 0 else []
    # A checkpoint at model.path is named by its files too: overwritten in place, it is a different start.
    root = Path(cfg.model.path).expanduser() if cfg.model.path else None
    source = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
              for p in sorted(root.rglob("*")) if p.is_file()] if root else []
    # The reference and critic checkpoints do not shape the initial policy: not part of its key.
    shape = {k: v for k, v in asdict(cfg.model).items() if k not in SCORER_PATHS}
    # An environment's demonstrations replace the answers the warm-up trains on (none: the key is as it was).
    env = [cfg.env.name, cfg.env.params, cfg.env.observation_role] if cfg.env.enabled else []
    key = _digest(shape, asdict(cfg.warmup), train_file, os.path.getmtime(train_file), *source,
                  rlsys.__version__, transformers.__version__, torch.__version__, *left_out, *target, *env)
    model_dir = cache / "models" / key
    done = partial(Prepared, str(model_dir), train_file, data.eval_file, train_prompts, data.eval_prompts,
                   dropped_rows=data.dropped_rows, dropped=data.dropped)
    if (model_dir / "config.json").exists():
        return done(True, 0.0)

    start = time.perf_counter()
    if cfg.model.path:
        model = load_checkpoint_part(AutoModelForCausalLM, "model.path", cfg.model.path, "weights", dtype=torch.float32)
    else:
        model = build_tiny_llama(cfg.model, tokenizer)
    if cfg.warmup.steps:
        losses, checks = supervised_warmup(model, data.prompt_format, train_prompts, cfg.warmup, seed=cfg.model.seed,
                                           eval_prompts=data.eval_prompts, max_new_tokens=cfg.rollout.max_new_tokens,
                                           demonstrations=demonstrations(cfg, train_prompts),
                                           observation_role=cfg.env.observation_role)
        log.info("warm-up: %d steps, loss %.3f → %.3f%s", len(losses), losses[0], losses[-1],
                 f"; held-out greedy accuracy {checks[-1][1]:.1%} (target {cfg.warmup.target_accuracy:.0%})"
                 if checks else "")
    tmp = model_dir.with_name(model_dir.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(model_dir)  # atomic: a concurrent run sees all of the checkpoint or none of it
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another run finished the same checkpoint first
    return done(False, time.perf_counter() - start)
