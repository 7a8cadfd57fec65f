"""Applying the rules to one model instance, reversibly.

Everything is per instance: norm and activation modules get an instance-level ``forward``, projections
get forward hooks that rescale the gradient of their outputs, and all of it is undone on exit. Nothing
in ``transformers`` (its attention registry, its classes) or in ``torch.nn`` is touched, so two models in
one process never affect each other and the attention kernel (eager, SDPA, ...) does not matter.

Why the attention-boundary factors can sit on the projections: between a projection's output and the
attention kernel there are only operations that are linear under the rules (q/k-norm with a detached
normaliser, RoPE, reshapes, GQA repeats), and a constant factor on a gradient commutes with linear
backward maps. So ``grad(q_proj out) / 4`` is exactly ``grad(kernel query) / 4`` propagated back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from contrastlens.adapters import ArchAdapter, get_adapter
from contrastlens.adapters.base import get_submodule
from contrastlens.errors import ContrastLensError, UnsupportedArchitectureError
from contrastlens.rules.functions import GradScale, IdentityRule, NormRule

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle


@dataclass(frozen=True)
class RuleSet:
    """The factors of one LRP variant."""

    name: str
    q_scale: float  # gradient factor at the query (0 = stop-gradient)
    k_scale: float
    v_scale: float
    gate_half: bool  # 1/2 on each factor of a gated product
    gate_stop: bool  # the gate acts as a constant multiplier
    description: str = ""


RULES: dict[str, RuleSet] = {
    "attnlrp": RuleSet(
        "attnlrp", 0.25, 0.25, 0.5, gate_half=True, gate_stop=False,
        description="AttnLRP: detached normalisers, identity rule on activations, 1/2 on gated products, "
        "q and k gradients /4 and v /2 at the attention kernel",
    ),
    "cp-lrp": RuleSet(
        "cp-lrp", 0.0, 0.0, 1.0, gate_half=False, gate_stop=True,
        description="CP-LRP: no gradient through query, key and the gate; detached normalisers",
    ),
}

_ACTIVE_ATTR = "_contrastlens_rules_active"


def rules_active(model: nn.Module) -> bool:
    return active_rule(model) is not None


def active_rule(model: nn.Module) -> str | None:
    """The name of the rule set applied to ``model`` right now (None: no rules are applied)."""
    v = getattr(model, _ACTIVE_ATTR, None)
    return v if isinstance(v, str) else None


def get_rule(rule: str | RuleSet | None) -> RuleSet:
    """The rule set named ``rule`` (``attnlrp``, ``cp-lrp``; case and ``_``/``-`` do not matter). None (the
    rule of an explanation made with a method that uses no LRP rule) is an error."""
    if isinstance(rule, RuleSet):
        return rule
    if rule is None:
        raise ContrastLensError("no LRP rule: this needs an explanation made with an LRP method (attnlrp or cp-lrp)")
    key = str(rule).lower().replace("_", "-")
    if key not in RULES:
        raise ContrastLensError(f"unknown rule {rule!r}; choose one of: {', '.join(RULES)}")
    return RULES[key]


def _norm_kind(module: nn.Module, adapter: ArchAdapter) -> str:
    if isinstance(module, nn.LayerNorm):
        return "layer"
    name = type(module).__name__
    if "RMSNorm" in name or "RmsNorm" in name:
        return "rms"
    raise UnsupportedArchitectureError(
        f"{adapter.name}: norm module {name} is not a known RMSNorm/LayerNorm; no rule for it"
    )


class _Patcher:
    """Records every change so that it can be undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], object]] = []
        self._seen: set[int] = set()

    def set_forward(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        if id(module) in self._seen:
            return
        self._seen.add(id(module))
        old: Callable[..., Any] | None = module.__dict__.get("forward")  # an instance-level forward
        module.forward = fn

        def undo() -> None:
            if old is not None:
                module.forward = old
            else:
                del module.forward

        self._undo.append(undo)

    def hook(self, handle: RemovableHandle) -> None:
        self._undo.append(handle.remove)

    def call(self, fn: Callable[[], object]) -> None:
        self._undo.append(fn)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _scale_output_hook(scale: float | torch.Tensor) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
    def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        if isinstance(scale, (int, float)) and scale == 0.0:
            return output.detach()
        return GradScale.apply(output, scale)

    return hook


def _half_input_hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (GradScale.apply(args[0], 0.5), *args[1:])


def _check_supported(model: nn.Module, adapter: ArchAdapter) -> None:
    cfg = model.config
    text_cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    if getattr(text_cfg, "attn_logit_softcapping", None):
        raise UnsupportedArchitectureError(
            f"{adapter.name}: attention logit soft-capping is not supported by the AttnLRP rules here"
        )


@contextlib.contextmanager
def apply_rules(
    model: nn.Module,
    rule: str | RuleSet = "attnlrp",
    *,
    checkpointing: bool = False,
    adapter: ArchAdapter | None = None,
) -> Iterator[ArchAdapter]:
    """Put ``model`` (a Hugging Face causal LM) under LRP rules for the duration of the block.

    Inside, the model is in eval mode (dropout off), its parameters do not require gradients, and its
    backward pass computes the modified gradient. ``checkpointing=True`` recomputes each block in the
    backward pass (activation memory of one block at a time). Everything is restored on exit.
    """
    rs = get_rule(rule)
    adapter = adapter or get_adapter(model)
    if rules_active(model):
        raise ContrastLensError("rules are already applied to this model (nested apply_rules)")
    _check_supported(model, adapter)
    p = _Patcher()
    try:
        setattr(model, _ACTIVE_ATTR, rs.name)
        p.call(lambda: delattr(model, _ACTIVE_ATTR))
        was_training = model.training
        model.eval()
        p.call(lambda: model.train(was_training))
        frozen = [q for q in model.parameters() if q.requires_grad]
        for q in frozen:
            q.requires_grad_(False)
        p.call(lambda: [q.requires_grad_(True) for q in frozen])

        def norm_rule(module: nn.Module) -> None:
            kind = _norm_kind(module, adapter)
            off = adapter.norm.weight_offset if kind == "rms" else 0.0
            p.set_forward(module, lambda x, _m=module, _k=kind, _o=off: NormRule.apply(x, _m, _k, _o))

        norm_rule(adapter.final_norm_module(model))
        b = adapter.block
        for blk in adapter.blocks(model):
            for path in b.norms:
                mod = get_submodule(blk, path)
                if mod is None:
                    raise UnsupportedArchitectureError(f"{adapter.name}: block has no norm at {path!r}")
                norm_rule(mod)
            # activation: identity rule, or a constant gate (CP-LRP)
            act = adapter.part(blk, "act")
            if act is not None:
                gated = bool(b.gate_product_consumer)
                orig = type(act).forward
                if gated and rs.gate_stop:
                    p.set_forward(act, lambda x, _a=act, _f=orig: _f(_a, x).detach())
                else:
                    p.set_forward(act, lambda x, _a=act, _f=orig: IdentityRule.apply(x, lambda t: _f(_a, t)))
                if gated and rs.gate_half:
                    consumer = adapter.part(blk, "gate_product_consumer")
                    if consumer is None:
                        raise UnsupportedArchitectureError(f"{adapter.name}: block has no {b.gate_product_consumer!r}")
                    p.hook(consumer.register_forward_pre_hook(_half_input_hook))
            # attention boundary
            if b.qkv_proj:
                qkv = adapter.part(blk, "qkv_proj")
                if qkv is None:
                    raise UnsupportedArchitectureError(f"{adapter.name}: block has no {b.qkv_proj!r}")
                d: int = getattr(qkv, "nf", None) or cast(torch.Tensor, qkv.weight).shape[0]  # Conv1D stores [in, out]
                third = d // 3
                scale = torch.cat([
                    torch.full((third,), rs.q_scale),
                    torch.full((third,), rs.k_scale),
                    torch.full((d - 2 * third,), rs.v_scale),
                ])
                p.hook(qkv.register_forward_hook(_scale_output_hook(scale)))
            else:
                for name, s in (("q_proj", rs.q_scale), ("k_proj", rs.k_scale), ("v_proj", rs.v_scale)):
                    mod = adapter.part(blk, name)
                    if mod is None:
                        raise UnsupportedArchitectureError(f"{adapter.name}: block has no {name}")
                    if s != 1.0:
                        p.hook(mod.register_forward_hook(_scale_output_hook(s)))
            if checkpointing:
                orig_fwd = blk.forward

                def ckpt_forward(*args: Any, _f: Callable[..., Any] = orig_fwd, **kwargs: Any) -> Any:
                    return checkpoint(_f, *args, use_reentrant=False, **kwargs)

                p.set_forward(blk, ckpt_forward)
        yield adapter
    finally:
        p.restore()
