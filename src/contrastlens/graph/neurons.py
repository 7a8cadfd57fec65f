"""Neuron-level refinement of a graph node or edge (coarse to fine).

- :func:`state_dimensions`: per-dimension relevance h[p, k] * g~[p, k] of a node (sums to its R).
- :func:`mlp_neurons`: relevance of block l's MLP neurons (the intermediate activations, i.e. the input
  of the down projection) at position p: z_k * (modified gradient at z_k), for S. Summed over the
  neurons it is the relevance the MLP adds to the residual stream at p (minus output-bias shares).
- :func:`edge_dimensions`: for an edge (s, i) -> (t, j), the per-dimension relevance of h_s[i] when only
  target state j's relevance is injected (one replay row, unsummed); it sums to A[j, i].

Each returns a pandas DataFrame of the top-k entries by |relevance| (``index``, ``relevance``, and the
factors), plus the total in ``DataFrame.attrs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from contrastlens import nodes
from contrastlens.attribution.explain import check_model
from contrastlens.attribution.explanation import Explanation
from contrastlens.attribution.spec import check_compatible
from contrastlens.errors import InputError
from contrastlens.graph._model import block_view
from contrastlens.models.loaded import LoadedModel
from contrastlens.rules.context import active_rule, apply_rules, get_rule


def _top(values: torch.Tensor, k: int, **cols):
    import pandas as pd

    v = values.float().cpu()
    k = min(int(k), v.numel())
    idx = torch.topk(v.abs(), k).indices
    df = pd.DataFrame({"index": idx.numpy(), "relevance": v[idx].numpy(),
                       **{name: c.float().cpu()[idx].numpy() for name, c in cols.items()}})
    df.attrs["total"] = float(v.sum())
    df.attrs["size"] = v.numel()
    return df


@contextlib.contextmanager
def _rules_of(lm: LoadedModel, explanation: Explanation, rule: str | None) -> Iterator[None]:
    """The explanation's rules on ``lm`` for the block (a ``rule`` that disagrees with the explanation's
    spec, or a model with other weights, is an error)."""
    check_compatible(explanation.spec, rule=rule)
    check_model(lm, explanation.provenance, what="the explanation", on_mismatch="error")
    want = get_rule(explanation.spec.rule)
    current = active_rule(lm.model)
    if current is None:
        with apply_rules(lm.model, want):
            yield
    elif current == want.name:
        yield
    else:
        raise InputError(f"rules {current!r} are applied to the model, but the explanation was made with {want.name!r}")


def _state(explanation: Explanation, layer: str) -> tuple[Any, Any]:
    check_compatible(explanation.spec)  # a method without hidden-state relevance has no states to read
    states = getattr(explanation, "states", None)
    if not states or layer not in states:
        raise InputError(f"the explanation has no state {layer!r}; make it with keep_states=True")
    return states[layer]


def state_dimensions(explanation: Explanation, layer: str, pos: int, top_k: int = 10) -> Any:
    """Top-k hidden dimensions of node (layer, pos) by |h * g~|."""
    h, g = _state(explanation, layer)
    p = int(pos) % h.shape[0]
    return _top(h[p].float() * g[p].float(), top_k, h=h[p], grad=g[p])


def mlp_neurons(lm: LoadedModel, explanation: Explanation, block: int, pos: int, top_k: int = 10,
                rule: str | None = None) -> Any:
    """Top-k MLP neurons of ``block`` at position ``pos`` by |z * dS/dz| (modified gradient, under the
    explanation's rule; ``rule`` may only repeat it)."""
    model, adapter = lm.model, lm.adapter
    L = adapter.num_layers(model)
    if not 0 <= block < L:
        raise InputError(f"block {block} is outside 0..{L - 1}")
    view = block_view(model, adapter, block)
    if view.down_proj is None:
        raise InputError(f"{adapter.name}: no MLP output projection found")
    h_mid, _ = _state(explanation, nodes.mid(block))
    _, g_out = _state(explanation, nodes.post(block))
    p = int(pos) % h_mid.shape[0]
    got = {}

    def pre(_m, args):
        got["z"] = args[0].detach()

    with _rules_of(lm, explanation, rule):
        handle = view.down_proj.register_forward_pre_hook(pre)
        try:
            with torch.no_grad():
                x = h_mid[p][None, None]
                view.mlp(view.mlp_in_norm(x) if view.mlp_in_norm is not None else x)
        finally:
            handle.remove()
        z = got["z"][0, 0]
        with torch.enable_grad():
            zz = z.clone().requires_grad_(True)
            y = type(view.down_proj).forward(view.down_proj, zz[None])
            if view.mlp_out_norm is not None:
                y = view.mlp_out_norm(y)
            (gz,) = torch.autograd.grad(y, zz, g_out[p][None].to(y.dtype))
    return _top(z.float() * gz.float(), top_k, activation=z, grad=gz)


def edge_dimensions(lm: LoadedModel, explanation: Explanation, src: str, tgt: str, j: int, i: int,
                    top_k: int = 10, rule: str | None = None) -> Any:
    """Top-k dimensions of source state h_src[i] for the edge (src, i) -> (tgt, j) (under the explanation's
    rule; ``rule`` may only repeat it)."""
    from contrastlens.graph.replay import replay_rows

    model, adapter = lm.model, lm.adapter
    L = adapter.num_layers(model)
    src, tgt = nodes.canonical(src, L), nodes.canonical(tgt, L)
    if nodes.layer_index(tgt) <= nodes.layer_index(src):
        raise InputError(f"no edge from layer {src!r} to layer {tgt!r}")
    h, _ = _state(explanation, src)
    _, g = _state(explanation, tgt)
    n = h.shape[0]
    j, i = int(j) % n, int(i) % n
    with _rules_of(lm, explanation, rule):
        per_dim = replay_rows(model, adapter, src, tgt, h, g, [j], batch_size=1, reduce=False)[0, i]
    return _top(per_dim, top_k, h=h[i])


def refine(lm: LoadedModel, explanation: Explanation, node: tuple[str, int] | None = None,
           edge: tuple[tuple[str, int], tuple[str, int]] | None = None, top_k: int = 10) -> dict:
    """Coarse to fine for one node (``(layer, pos)``) or edge (``((src, i), (tgt, j))``): the top hidden
    dimensions and, where the node is a block output or the edge crosses an MLP, the top MLP neurons."""
    out: dict = {}
    if node is not None:
        layer, pos = node
        out["dimensions"] = state_dimensions(explanation, layer, pos, top_k)
        if nodes.is_post(layer):
            out["mlp_neurons"] = mlp_neurons(lm, explanation, nodes.block_of(layer), pos, top_k)
    if edge is not None:
        (s, i), (t, j) = edge
        out["edge_dimensions"] = edge_dimensions(lm, explanation, s, t, j, i, top_k)
        if nodes.transition_kind(s, t)[0] == "mlp":
            out["mlp_neurons"] = mlp_neurons(lm, explanation, nodes.block_of(t), j, top_k)
    if not out:
        raise InputError("give a node=(layer, pos) or an edge=((src, i), (tgt, j))")
    return out

