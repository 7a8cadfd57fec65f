"""A minimal private stand-in for the explanation engine's ``keep_states`` output (tests only).

Used only when ``contrastlens.attribution.explain`` is not importable: it records h and the modified
gradient g~ at every node layer (emb, l.mid, l) under the rules, for S = logit(target) - logit(contrast)
at the last position.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import torch


def ensure_rules_importable() -> None:
    try:
        import contrastlens.rules  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "contrastlens.rules.coverage":
            raise
        stub = types.ModuleType("contrastlens.rules.coverage")
        stub.check_coverage = lambda *a, **k: None
        sys.modules["contrastlens.rules.coverage"] = stub


def explain_states(lm, prompt, target=None, contrast=None, *, objective="logit_diff", rule="attnlrp",
                   keep_states=True, **_):
    ensure_rules_importable()
    from contrastlens.graph._model import layer_names
    from contrastlens.rules.context import apply_rules

    model, adapter = lm.model, lm.adapter
    ids = lm.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    n = len(ids)
    tid = lm.token_id(target, ids) if target is not None else None
    cid = lm.token_id(contrast, ids) if contrast is not None else None
    saved: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []

    def tap(key, h):
        saved[key] = h
        h.register_hook(lambda g, _k=key: grads.__setitem__(_k, g[0].detach()))

    blocks = adapter.blocks(model)
    with apply_rules(model, rule):
        handles.append(blocks[0].register_forward_pre_hook(
            lambda m, a, k: tap("emb", a[0] if a else k["hidden_states"]), with_kwargs=True))
        for i, blk in enumerate(blocks):
            handles.append(blk.register_forward_hook(
                lambda m, a, o, _i=i: tap(str(_i), o[0] if isinstance(o, tuple) else o)))
            mid = adapter.part(blk, "mid")
            handles.append(mid.register_forward_pre_hook(
                lambda m, a, k, _i=i: tap(f"{_i}.mid", a[0] if a else next(iter(k.values()))), with_kwargs=True))
        try:
            emb = adapter.embedding(model)(torch.tensor([ids])).detach().requires_grad_(True)
            out = adapter.base(model)(inputs_embeds=emb, use_cache=False)
            logits = adapter.head(model)(out.last_hidden_state[0, -1])
            if tid is None:
                tid = int(logits.argmax())
            if cid is None:
                cid = int(logits.topk(2).indices[1])
            S = logits[tid] - logits[cid]
            S.backward()
        finally:
            for h in handles:
                h.remove()
    L = len(blocks)
    states = {k: (saved[k][0].detach(), grads[k]) for k in layer_names(L, True)}
    rel = {k: (h.float() * g.float()).sum(-1) for k, (h, g) in states.items()}
    return SimpleNamespace(
        logit_diff=float(S), states=states, input_ids=ids, tokens=lm.decode_tokens(ids), target_id=tid,
        contrast_id=cid, layer_relevance=torch.stack([rel["emb"]] + [rel[str(i)] for i in range(L)]).numpy(),
        mid_relevance=torch.stack([rel[f"{i}.mid"] for i in range(L)]).numpy(), n_tokens=n,
        final_norm_bias_share=0.0, meta={},
    )
