"""Pretraining: the IJEPA module (:mod:`.ijepa`), the loop (:mod:`.loop`), its inputs, checkpoints and run log.

``ijepa.train`` is both this package and the public ``train(cfg, out_dir)`` function: once any ``ijepa.train.*``
module is imported, Python binds the name ``ijepa.train`` to the package, so the package is callable and calls
:func:`ijepa.train.loop.train` (``ijepa.train(cfg, out)`` works however often it is reached).
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .loop import train  # on call: importing the package must not import the whole training stack

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
