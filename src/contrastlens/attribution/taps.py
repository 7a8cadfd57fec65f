"""Recording relevance (h ⊙ g̃ summed over the hidden dimension) at residual-stream states.

Each state is tapped with a tensor hook, which receives the *total* gradient of that tensor (through
the residual branch and the sub-block branch alike). Hooks are registered by module hooks that live
only as long as one explanation.
"""

from __future__ import annotations

import torch

from contrastlens.adapters import ArchAdapter
from contrastlens.nodes import EMB, mid, post


class StateRecorder:
    """Collects per-position relevance (and optionally the full h, g̃) of named states."""

    def __init__(self, keep_states: bool = False) -> None:
        self.keep_states = keep_states
        self.relevance: dict[str, torch.Tensor] = {}
        self.states: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def tap(self, key: str, h: torch.Tensor) -> None:
        if not (isinstance(h, torch.Tensor) and h.requires_grad):
            return  # e.g. a recomputation under no_grad

        box = [h]  # released once the gradient has arrived, so h is freed as early as in plain autograd

        def hook(g: torch.Tensor, _key=key) -> None:
            if not box:
                return
            hb, gb = box.pop()[0], g[0]
            if hb.dtype == torch.float32 and gb.dtype == torch.float32:  # no n x d temporary
                rel = torch.bmm(hb.unsqueeze(1), gb.unsqueeze(2)).reshape(-1)
            else:
                rel = (hb.float() * gb.float()).sum(-1)
            self.relevance[_key] = rel
            if self.keep_states:
                self.states[_key] = (hb.detach(), gb.detach())

        h.register_hook(hook)

    def attach(self, model: torch.nn.Module, adapter: ArchAdapter) -> None:
        blocks = adapter.blocks(model)

        def pre_block0(_m, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            self.tap(EMB, h)

        self._handles.append(blocks[0].register_forward_pre_hook(pre_block0, with_kwargs=True))
        for i, blk in enumerate(blocks):
            def out_hook(_m, _args, output, _i=i):
                h = output[0] if isinstance(output, (tuple, list)) else output
                self.tap(post(_i), h)

            self._handles.append(blk.register_forward_hook(out_hook))
            mid_module = adapter.part(blk, "mid")
            if mid_module is not None:
                def mid_hook(_m, args, kwargs, _i=i):
                    h = args[0] if args else next(iter(kwargs.values()))
                    self.tap(mid(_i), h)

                self._handles.append(mid_module.register_forward_pre_hook(mid_hook, with_kwargs=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


__all__ = ["StateRecorder"]
