"""Compiled code, fused kernels and forward hooks: keep the model's Python visible while a tracker measures.

Plain PyTorch, no Lightning. Dynamo does not guard compiled code on hooks added later, so a
tracker attached after compilation would silently see nothing, and torch's fused attention fast
path runs a whole encoder layer, activation included, in one kernel; see :class:`EagerWhileMeasuring`.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from emergence_lightning import _compat


def compiled_modules(model: nn.Module) -> list[str]:
    """Qualified names of the parts of ``model`` that ``torch.compile`` wraps (``""``: the model itself).

    All forms count: ``torch.compile(module)`` (an ``OptimizedModule`` around ``_orig_mod``),
    ``module.compile()`` in place, and compiled methods set on a module (``self.forward =
    torch.compile(self.forward)``; ``Trainer.fit(torch.compile(model))`` does this to ``forward``
    and the ``*_step`` methods of the LightningModule).
    """
    optimized = _compat.optimized_module_class()  # () when dynamo was never imported: nothing compiled

    def compiled(module: nn.Module) -> bool:
        if isinstance(module, optimized) or _compat.compiled_in_place(module):
            return True
        # Compiled methods set on the instance, or decorated with @torch.compile in the class body.
        namespaces = [vars(module), *(vars(cls) for cls in type(module).__mro__)]
        return any(
            _compat.is_compiled_function(value) for namespace in namespaces for value in namespace.values()
        )

    return [name for name, module in model.named_modules() if compiled(module)]


class EagerWhileMeasuring:
    """Runs ``torch.compile``'d code eagerly while any tracker is attached.

    Dynamo does not guard compiled code on the forward hooks of submodules
    (``torch._dynamo.config.skip_nnmodule_hook_guards``): code compiled before the hooks were
    added runs on without calling them, so the tracker would see some batches, or none, without an
    error. The ``force_eager`` stance runs the original modules, hooks and all, and compiled code
    resumes once the last tracker detaches. It is held for every tracker, not only for models found
    compiled, since compiled code can hide where no module shows it (a compiled function called
    in ``forward``); on code that was never compiled it changes nothing. The holders are a weak set
    of trackers: a copy of an attached tracker cannot release the original's hold, and one dropped
    while attached stops counting (the stance then ends with the next tracker's detach).

    For the same reason torch's native fast path of ``nn.TransformerEncoder`` and
    ``nn.MultiheadAttention`` (``torch.backends.mha``) is off while held: in eval without gradients
    it runs each encoder layer, its ReLU or GELU included, in one fused kernel (on nested tensors
    when a padding mask is given), where no activation can be seen. Measured passes run torch's
    Python path instead, which computes the same function (padded positions then hold values
    rather than zeros).
    """

    holders: weakref.WeakSet[Any] = weakref.WeakSet()
    stance: object = None
    fastpath: bool | None = None  # torch.backends.mha's setting before the first hold

    @classmethod
    def hold(cls, tracker: Any) -> bool:
        """Enters the eager stance for ``tracker``; whether it is held (False on torch < 2.6)."""
        set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
        if set_stance is None:
            compiled = compiled_modules(tracker.model)  # without the stance, only these can be refused
            if compiled:
                raise RuntimeError(
                    f"Modules {compiled} are compiled with torch.compile, whose compiled code skips forward "
                    "hooks added after compilation; measuring them needs torch >= 2.6 "
                    f"(`torch.compiler.set_stance`), found torch {torch.__version__}. Upgrade torch, or measure "
                    "the uncompiled module (`compiled._orig_mod`, or no `module.compile()`)."
                )
            return False
        if cls.stance is None:
            cls.stance = set_stance("force_eager")
        if cls.fastpath is None:
            cls.fastpath = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
        cls.holders.add(tracker)
        return True

    @classmethod
    def release(cls, tracker: Any) -> None:
        cls.holders.discard(tracker)
        if not cls.holders and cls.stance is not None:
            cls.stance.__exit__(None, None, None)  # type: ignore[attr-defined]  # the stance before `hold`
            cls.stance = None
        if not cls.holders and cls.fastpath is not None:
            torch.backends.mha.set_fastpath_enabled(cls.fastpath)
            cls.fastpath = None
