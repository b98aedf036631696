"""``rlsys train | eval | inspect``.

    rlsys train [--algo NAME] [--config FILE ...] [--print-config] [key=value ...]   run RL training
    rlsys train --resume RUN_DIR [key=value ...]                   continue a run from its newest valid checkpoint
    rlsys eval MODEL_DIR [--config FILE] [--samples N --k K ...] [--output FILE] [key=value ...]
                                                                   held-out pass@1 (greedy) and pass@k of a checkpoint
    rlsys inspect RUN_DIR                                          what a run trained, dropped and why
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rlsys.config import DEFAULT_CONFIG, ConfigError, algo_recipe, load_config, to_yaml


def main(argv: list[str] | None = None) -> int:
    """The ``rlsys`` command; returns its exit code."""
    try:
        return _main(argv)
    except BrokenPipeError:  # stdout's reader quit early (rlsys inspect RUN | head): what it wanted, it got
        # Point stdout at /dev/null so that Python's flush at exit does not raise again; 141 is what a process
        # ended by SIGPIPE (cat, grep) gives.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="rlsys", description="Asynchronous RL post-training of language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run RL training (no arguments: the embedded default)")
    train.add_argument("--config", action="append", help="YAML experiment file; repeat to merge several in order "
                       "(default: the embedded default)")
    train.add_argument("--algo", help="an algorithm recipe merged after the config files: grpo, dr_grpo, dapo, gspo, "
                       "ppo_gae, rloo, reinforce_pp, cispo (the files in configs/algos/)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest valid "
                       "checkpoint, with its config.yaml (key=value overrides still apply, e.g. a larger "
                       "train.num_steps)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="e.g. train.num_steps=20 train.max_staleness=0")
    evaluate = sub.add_parser("eval", help="held-out pass@1 (greedy) and pass@k (sampled) of a Hugging Face "
                              "checkpoint on the config's task")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--config", help="YAML experiment file whose task and reward to use")
    evaluate.add_argument("--samples", type=int, default=0, metavar="N",
                          help="completions sampled per problem at rollout.temperature, for pass@k (default 0: greedy "
                          "only; with --k and no --samples, the largest k)")
    evaluate.add_argument("--k", type=int, action="append", metavar="K", help="report pass@K (repeat for several)")
    evaluate.add_argument("--output", help="per-problem results as Parquet (default: eval.parquet beside MODEL_DIR, "
                          "i.e. in the run directory of RUN_DIR/model)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value")
    inspect = sub.add_parser("inspect", help="summarise a finished run directory")
    inspect.add_argument("run_dir")
    # key=value overrides may come after options too (rlsys eval DIR --samples 8 key=value): argparse takes the
    # positionals before the first option only, so the rest are picked up here
    args, rest = parser.parse_known_args(argv)
    if rest and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in rest)):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    if args.command == "inspect":
        from rlsys.report import inspect_run

        try:
            print(inspect_run(args.run_dir))
        except FileNotFoundError as e:
            print(f"rlsys: {e}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        files = args.config if isinstance(args.config, list) or args.config is None else [args.config]
        if getattr(args, "resume", None):
            files, args.overrides = _resume_args(args.resume, files, args.overrides)
        if getattr(args, "algo", None) is not None:  # --algo '' is an unknown recipe, not no recipe
            files = [*(files or [DEFAULT_CONFIG]), algo_recipe(args.algo)]
        cfg = load_config(files, args.overrides)
    except ConfigError as e:
        print(f"rlsys: configuration error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):
        print(to_yaml(cfg), end="")
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # before transformers is imported
    if args.command == "eval":
        ks = tuple(args.k or ())
        samples = args.samples or max(ks, default=0)
        if samples < 0 or any(not 1 <= k <= samples for k in ks):
            print(f"rlsys: --k must be between 1 and --samples ({samples}); got --k {' '.join(map(str, ks))}",
                  file=sys.stderr)
            return 2
        return _evaluate(args.model_dir, cfg, samples, ks, args.output)
    from rlsys.actors.placement import PlacementError
    from rlsys.controller import PipelineStalled
    from rlsys.data.tasks import DatasetError
    from rlsys.failures import ActorLost, RequestsFailing, RewardsFailing, Terminated
    from rlsys.train import train as run_training  # heavy imports (ray, torch) only when training

    try:
        run_training(cfg)
    except (PlacementError, DatasetError, ConfigError) as e:  # what is wrong and where: no traceback
        print(f"rlsys: {e}", file=sys.stderr)
        return 2
    except (PipelineStalled, RequestsFailing, RewardsFailing, ActorLost) as e:  # stopped mid-run: outputs kept
        print(f"rlsys: the run stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:  # train() has flushed the sample log and stopped the actors on its way out
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"rlsys: {how}; what the run wrote so far is in its run directory (samples.parquet, metrics.jsonl, "
              "tensorboard/); rlsys train --resume RUN_DIR continues from its newest checkpoint", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    return 0


def _resume_args(run_dir: str, files: list[str] | None, overrides: list[str]) -> tuple[list[str], list[str]]:
    """The config files and overrides of ``rlsys train --resume RUN_DIR``: the run's own config.yaml, its directory
    as output.root/output.run_name, and train.resume=true, then the overrides given."""
    from pathlib import Path

    path = Path(run_dir).expanduser().resolve()
    if files:
        raise ConfigError("--resume takes the run's own config.yaml; give changes as key=value overrides, not --config")
    if not path.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such directory; give the directory of a run (output.root/"
                          "output.run_name)")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; give the directory of a run (output.root/"
                          "output.run_name)")
    return [str(path / "config.yaml")], [f"output.root={path.parent}", f"output.run_name={path.name}",
                                         "train.resume=true", *overrides]


def _evaluate(model_dir: str, cfg, samples: int, ks: tuple[int, ...], output: str | None) -> int:
    from dataclasses import replace
    from pathlib import Path

    from rlsys.config import checkpoint_problem
    from rlsys.data.tasks import DatasetError
    from rlsys.evaluate import evaluate_checkpoint
    from rlsys.prepare import load_datasets

    if why := checkpoint_problem("MODEL_DIR", model_dir):
        print(f"rlsys: {why}", file=sys.stderr)
        return 2
    try:  # the same checks as training, with MODEL_DIR's tokenizer and context: over-long or unknown-token prompts
        data = load_datasets(replace(cfg, model=replace(cfg.model, path=model_dir)))
    except (DatasetError, ConfigError) as e:
        print(f"rlsys: {e}", file=sys.stderr)
        return 2
    prompts, eval_file = data.eval_prompts, data.eval_file
    try:
        result = evaluate_checkpoint(model_dir, prompts, data.prompt_format, cfg.reward, cfg.rollout, samples, ks,
                                     env=cfg.env)
    except ConfigError as e:  # weights that do not load or do not fit the config
        print(f"rlsys: {e}", file=sys.stderr)
        return 2
    for p in result.problems[:5]:
        print(f"  {p.prompt.text!r} → {p.greedy!r} (reward {p.greedy_reward:.2f})")
    written = result.write_parquet(output or Path(model_dir).resolve().parent / "eval.parquet")
    for k, value in result.pass_at.items():
        print(f"pass@{k} ({samples} samples per problem at temperature {cfg.rollout.temperature:g}): {value:.1%}")
    print(f"per-problem results: {written}")
    print(f"held-out accuracy of {model_dir} on {len(prompts)} prompts of {eval_file}: {result.accuracy:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
