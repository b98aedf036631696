"""Thin Ray actors around the engines, the reward scorer and the buffer.

Each actor is a plain class; :mod:`rlsys.actors.placement` makes them remote in one place, with resources from
config, so tests can also build them in-process without a cluster.
"""
