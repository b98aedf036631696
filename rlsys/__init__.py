"""rlsys: distributed, asynchronous reinforcement learning for post-training language models, on Ray."""

__version__ = "0.1.0"
