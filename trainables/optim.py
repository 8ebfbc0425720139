"""torch's optimisers without importing ``torch._dynamo`` in a process that never compiles.

torch wraps an optimiser's ``step`` so that the compiler breaks its graph there (``import
torch._dynamo`` on every call) and marks ``add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` not to be traced (the import on their first call). That import is 1.1-1.5 s: of
every new worker process's first epoch (AdamW; 1.6 s of a cold 1.7 s one-epoch fit, issue 24), and
of every job's driver at its first calibration fit (L-BFGS; 1.08 s of the first temperature fit, then
2 ms a fit). losstune never calls an optimiser inside a compiled function (``optim.compile`` compiles
the losses only), so: the step runs torch's own unwrapped step under ``no_grad``, which is all its
wrapper does outside a compiled region (the same kernels, the same numbers), and the markers resolve
to the methods themselves, as torch's wrapper caches them. Once ``torch._dynamo`` is imported, or
where torch's wrappers are not what this expects, it is torch's optimiser unchanged.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["without_compiler"]

Opt = TypeVar("Opt", bound=torch.optim.Optimizer)


def without_compiler(base: type[Opt], name: str) -> type[Opt]:
    """A subclass of the optimiser ``base`` (called ``name``) whose step never imports the compiler."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # under torch's hooks and its graph break: its own step, found once (not on every step)
        self._raw_step = inspect.unwrap(base.step)
        self._plain = "torch._dynamo" not in sys.modules and self._raw_step is not base.step \
            and _resolve_dynamo_markers()
        base.__init__(self, *args, **kwargs)

    def step(self: Any, closure: Callable[[], Any] | None = None) -> Any:
        if not self._plain or "torch._dynamo" in sys.modules:
            return base.step(self, closure)
        with torch.no_grad():
            return self._raw_step(self, closure)

    return type(name, (base,), {"__init__": __init__, "step": step, "__module__": __name__,
                                "__doc__": f"``{base.__module__}.{base.__qualname__}`` without importing the "
                                           "compiler (``trainables.optim``)."})


def _resolve_dynamo_markers() -> bool:
    """Sets torch's cached "not traced" form of the marked ``Optimizer`` methods to the methods
    themselves; False where a method is not wrapped as expected (then nothing is changed)."""
    fns = [getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
           for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")]
    if not all(callable(fn) for fn in fns):
        return False
    for fn in fns:
        if getattr(fn, "__dynamo_disable", None) is None:
            fn.__dynamo_disable = fn  # type: ignore[union-attr]
    return True
