"""Rule coverage: walk the autograd graph of an objective and find non-linear operations with no rule.

Under the rules, the backward graph from the objective to the embeddings may contain only
(a) linear operations, (b) the rule nodes of ``contrastlens.rules.functions`` and (c) the bilinear
products the rules account for: the attention kernel (softmax and the q·k / a·v products, whose inputs
must all pass a q/k/v gradient scale before anything non-linear) and the gated product (whose output
must feed a 1/2 gradient scale). Anything else, an activation without the identity rule, a norm
computed from primitives, a stray product, is reported.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from contrastlens.errors import CoverageError

RULE_NODES = {"NormRuleBackward", "IdentityRuleBackward", "GradScaleBackward"}
SCALE_NODE = "GradScaleBackward"

# Operations that are linear in their (single) differentiable input, or pure data movement.
LINEAR = {
    "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "NegBackward0", "ViewBackward0",
    "UnsafeViewBackward0", "ReshapeAliasBackward0", "TransposeBackward0", "TransposeBackward1", "TBackward0",
    "PermuteBackward0", "ExpandBackward0", "CloneBackward0", "ToCopyBackward0", "SliceBackward0",
    "SelectBackward0", "IndexBackward0", "CatBackward0", "SplitBackward0", "SplitWithSizesBackward0",
    "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3",
    "SqueezeBackward4", "SumBackward0", "SumBackward1", "MeanBackward0", "MeanBackward1", "StackBackward0",
    "AsStridedBackward0", "AliasBackward0", "AccumulateGrad", "ContiguousBackward0", "UnbindBackward0",
    "EmbeddingBackward0", "MaskedFillBackward0", "WhereBackward0", "RepeatBackward0", "NarrowBackward0",
    "ExpandAsBackward0", "ViewAsRealBackward0", "CopySlices", "FlipBackward0", "RollBackward0",
    "IndexSelectBackward0", "GatherBackward0", "PadBackward0", "ConstantPadNdBackward0",
    "ReluBackward0",  # piecewise linear: its gradient already equals the identity rule's y/x
}
# Products: linear when only one operand is differentiable, bilinear otherwise.
PRODUCTS = {
    "MulBackward0", "MulBackward1", "MmBackward0", "BmmBackward0", "AddmmBackward0", "MvBackward0",
    "DotBackward0", "MatmulBackward0", "DivBackward0", "DivBackward1", "BaddbmmBackward0", "AddbmmBackward0",
    "LinearBackward0", "EinsumBackward0",
}
ATTENTION_KERNELS = ("ScaledDotProduct", "SoftmaxBackward", "_SoftmaxBackward", "SafeSoftmaxBackward",
                     "FlashAttention", "EfficientAttention")


@dataclass
class CoverageReport:
    nodes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    uncovered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.uncovered

    def __str__(self) -> str:
        head = f"{self.nodes} autograd nodes, {len(self.uncovered)} uncovered"
        if self.uncovered:
            head += ": " + ", ".join(sorted(set(self.uncovered)))
        return head


def _name(node) -> str:
    return type(node).__name__


def _children(node) -> list:
    return [f for f, _ in node.next_functions if f is not None]


def _is_attention(name: str) -> bool:
    return any(k in name for k in ATTENTION_KERNELS)


def walk(score: torch.Tensor) -> CoverageReport:
    """Classify every node of ``score``'s backward graph (no backward pass is run)."""
    if score.grad_fn is None:
        raise CoverageError("the objective has no autograd graph (nothing requires a gradient)")
    parents: dict = {}
    order = []
    seen = {score.grad_fn}
    queue = deque([score.grad_fn])
    while queue:
        node = queue.popleft()
        order.append(node)
        for c in _children(node):
            parents.setdefault(c, []).append(node)
            if c not in seen:
                seen.add(c)
                queue.append(c)

    memo: dict = {}

    def reaches_scale(node) -> bool:
        """Every differentiable input path of ``node`` passes a gradient scale through linear-under-the-rules
        operations (and attention internals) only."""
        stack = [node]
        todo = []
        while stack:
            x = stack.pop()
            if x in memo:
                continue
            todo.append(x)
            memo[x] = True  # provisional (the graph is a DAG)
            name = _name(x)
            if name == SCALE_NODE:
                continue
            if name == "AccumulateGrad" or not (
                name in LINEAR or name in RULE_NODES or name in PRODUCTS or _is_attention(name)
            ):
                memo[x] = False
                continue
            stack.extend(_children(x))
        # resolve: a node reaches iff all its children reach (post-order over the DAG)
        changed = True
        while changed:
            changed = False
            for x in reversed(todo):
                if memo[x] and _name(x) != SCALE_NODE and not all(memo.get(c, True) for c in _children(x)):
                    memo[x] = False
                    changed = True
        return memo[node]

    def fed_into_scale(node) -> bool:
        ps = parents.get(node, [])
        return bool(ps) and all(_name(p) == SCALE_NODE for p in ps)

    rep = CoverageReport(nodes=len(order))
    for node in order:
        name = _name(node)
        rep.counts[name] = rep.counts.get(name, 0) + 1
        kids = _children(node)
        if name in RULE_NODES or name in LINEAR:
            continue
        if name in PRODUCTS:
            if len(kids) <= 1:
                continue
            if fed_into_scale(node) or all(reaches_scale(k) for k in kids):
                continue
            rep.uncovered.append(name)
            continue
        if _is_attention(name):
            if "ScaledDotProduct" in name or "Attention" in name:
                nf = node.next_functions
                if len(nf) >= 3 and nf[0][0] is None and nf[1][0] is None:
                    continue  # query and key are constants (CP-LRP): a fixed linear mixing of values
            if all(reaches_scale(k) for k in kids):
                continue
            rep.uncovered.append(name)
            continue
        rep.uncovered.append(name)
    return rep

