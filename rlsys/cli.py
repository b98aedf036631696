"""``rlsys train [--config FILE] [--print-config] [key=value ...]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rlsys.config import ConfigError, load_config, to_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlsys", description="Asynchronous RL post-training of language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run RL training (no arguments: the embedded default)")
    train.add_argument("--config", help="YAML experiment file (default: the embedded default)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.num_steps=20 train.max_staleness=0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"rlsys: configuration error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # before transformers is imported
    from rlsys.train import train as run_training  # heavy imports (ray, torch) only when training

    run_training(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
