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

import torch

from contrastlens.errors import InputError
from contrastlens.graph._model import block_view, layer_index, layer_names


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


def _state(explanation, layer: str):
    states = getattr(explanation, "states", None)
    if not states or layer not in states:
        raise InputError(f"the explanation has no state {layer!r}; make it with keep_states=True")
    return states[layer]


def state_dimensions(explanation, layer: str, pos: int, top_k: int = 10):
    """Top-k hidden dimensions of node (layer, pos) by |h * g~|."""
    h, g = _state(explanation, layer)
    p = int(pos) % h.shape[0]
    return _top(h[p].float() * g[p].float(), top_k, h=h[p], grad=g[p])


def mlp_neurons(lm, explanation, block: int, pos: int, top_k: int = 10, rule: str = "attnlrp"):
    """Top-k MLP neurons of ``block`` at position ``pos`` by |z * dS/dz| (modified gradient)."""
    from contrastlens.rules.context import apply_rules, rules_active

    model, adapter = lm.model, lm.adapter
    L = adapter.num_layers(model)
    if not 0 <= block < L:
        raise InputError(f"block {block} is outside 0..{L - 1}")
    view = block_view(model, adapter, block)
    if view.down_proj is None:
        raise InputError(f"{adapter.name}: no MLP output projection found")
    mid, _ = _state(explanation, f"{block}.mid")
    _, g_out = _state(explanation, str(block))
    p = int(pos) % mid.shape[0]
    got = {}

    def pre(_m, args):
        got["z"] = args[0].detach()

    ctx = apply_rules(model, rule) if not rules_active(model) else _Null()
    with ctx:
        handle = view.down_proj.register_forward_pre_hook(pre)
        try:
            with torch.no_grad():
                x = mid[p][None, None]
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


def edge_dimensions(lm, explanation, src: str, tgt: str, j: int, i: int, top_k: int = 10,
                    rule: str = "attnlrp"):
    """Top-k dimensions of source state h_src[i] for the edge (src, i) -> (tgt, j)."""
    from contrastlens.graph.replay import replay_rows
    from contrastlens.rules.context import apply_rules, rules_active

    model, adapter = lm.model, lm.adapter
    allowed = layer_names(adapter.num_layers(model), True)
    if src not in allowed or tgt not in allowed or layer_index(tgt) <= layer_index(src):
        raise InputError(f"no edge from layer {src!r} to layer {tgt!r}")
    h, _ = _state(explanation, src)
    _, g = _state(explanation, tgt)
    n = h.shape[0]
    j, i = int(j) % n, int(i) % n
    ctx = apply_rules(model, rule) if not rules_active(model) else _Null()
    with ctx:
        per_dim = replay_rows(model, adapter, src, tgt, h, g, [j], batch_size=1, reduce=False)[0, i]
    return _top(per_dim, top_k, h=h[i])


def refine(lm, explanation, node: tuple[str, int] | None = None, edge=None, top_k: int = 10) -> dict:
    """Coarse to fine for one node (``(layer, pos)``) or edge (``((src, i), (tgt, j))``): the top hidden
    dimensions and, where the node is a block output or the edge crosses an MLP, the top MLP neurons."""
    out: dict = {}
    if node is not None:
        layer, pos = node
        out["dimensions"] = state_dimensions(explanation, layer, pos, top_k)
        if layer != "emb" and not layer.endswith(".mid"):
            out["mlp_neurons"] = mlp_neurons(lm, explanation, int(layer), pos, top_k)
    if edge is not None:
        (s, i), (t, j) = edge
        out["edge_dimensions"] = edge_dimensions(lm, explanation, s, t, j, i, top_k)
        if s.endswith(".mid") and t == s[:-4]:
            out["mlp_neurons"] = mlp_neurons(lm, explanation, int(t), j, top_k)
    if not out:
        raise InputError("give a node=(layer, pos) or an edge=((src, i), (tgt, j))")
    return out


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
