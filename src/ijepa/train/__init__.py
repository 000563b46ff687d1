"""Pretraining: the IJEPA module (:mod:`.ijepa`), the loop (:mod:`.loop`, whose :func:`~ijepa.train.loop.train`
runs a config into a run folder; the package root exports it as ``ijepa.pretrain``), its inputs, checkpoints and
run log.

This package exports nothing: Python binds the name ``ijepa.train`` to it as soon as any ``ijepa.train.*`` module
is imported, so it cannot also be a function.
"""
