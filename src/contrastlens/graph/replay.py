"""Batch-packed replay: the reference way to compute the edges of any transition ``s -> t``.

B copies of the source states h_s go in the batch dimension; copy b injects g~_t only at its own target
row j_b; one backward pass of the (modified, under the rules) sub-block maps between s and t then gives
B rows of the matrix: A[j_b, i] = sum_d h_s[i] * grad_b[i]. Every replay passes an explicit causal mask
(with the layer's sliding window), never relying on the attention backend to infer it. The batch size
is chosen from n, the model's width and the free memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from contrastlens.adapters import ArchAdapter
from contrastlens.graph._model import (
    PositionEmbeddings,
    additive_mask,
    attn_sub_block,
    block_view,
    free_memory_bytes,
    mlp_sub_block,
    sliding_window,
)
from contrastlens.nodes import sub_blocks

Progress = Callable[[int, int], None]


def _config(model: nn.Module) -> Any:
    cfg = model.config
    return getattr(cfg, "get_text_config", lambda: cfg)()


def replay_batch_size(model: nn.Module, n: int, num_sub_blocks: int, *, device: torch.device, dtype: torch.dtype,
                      memory_fraction: float = 0.25) -> int:
    """Largest B whose replay activations fit in ``memory_fraction`` of the free memory.

    Per copy and sub-block the backward keeps roughly: the residual, the norms and q/k/v/o
    (~8 d), the MLP (~4 d_ff) per token, plus (eager kernels) two n x n score maps per head.
    """
    cfg = _config(model)
    d = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0))
    dff = int(getattr(cfg, "intermediate_size", 0) or getattr(cfg, "n_inner", 0) or 4 * d)
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 1))
    bytes_ = torch.finfo(dtype).bits // 8
    per_token = (8 * d + 4 * dff) * bytes_
    eager = getattr(cfg, "_attn_implementation", "sdpa") == "eager"
    per_copy = num_sub_blocks * (n * per_token + (2 * heads * n * n * 4 if eager else 0)) + 3 * n * d * 4
    budget = free_memory_bytes(device) * memory_fraction
    return int(max(1, min(n, budget // max(per_copy, 1))))


class Replayer:
    """The sub-block maps between two node layers of one model, ready to replay in batches."""

    def __init__(self, model, adapter, src: str, tgt: str, n: int, *, device, dtype) -> None:
        self.model, self.adapter = model, adapter
        self.src, self.tgt, self.n = src, tgt, n
        self.ops = sub_blocks(src, tgt)
        self.pe = PositionEmbeddings(model, adapter, n, device=device, dtype=dtype)
        self.views = {i: block_view(model, adapter, i) for i, _ in self.ops}
        self.masks = {i: additive_mask(n, sliding_window(v), device=device, dtype=dtype)
                      for i, v in self.views.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, kind in self.ops:
            v = self.views[i]
            x = attn_sub_block(v, x, self.pe(i), self.masks[i]) if kind == "attn" else mlp_sub_block(v, x)
        return x


def replay_rows(
    model: nn.Module,
    adapter: ArchAdapter,
    src: str,
    tgt: str,
    h_src: torch.Tensor,
    g_tgt: torch.Tensor,
    rows: Sequence[int] | None = None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    reduce: bool = True,
) -> torch.Tensor:
    """Rows ``rows`` (default: all) of A^{src -> tgt}, by batch-packed replay. Must run under the rules.

    Returns [len(rows), n] float32 (``reduce=False``: the per-dimension [len(rows), n, d] products).
    """
    n, d = h_src.shape
    rows = list(range(n)) if rows is None else [int(j) for j in rows]
    device, dtype = h_src.device, h_src.dtype
    rp = Replayer(model, adapter, src, tgt, n, device=device, dtype=dtype)
    B = batch_size or replay_batch_size(model, n, len(rp.ops), device=device, dtype=dtype)
    out = torch.zeros(len(rows), n, *(() if reduce else (d,)), dtype=torch.float32, device=device)
    X = h_src.detach()
    G = g_tgt.detach().to(dtype)
    done = 0
    for c in range(0, len(rows), B):
        chunk = rows[c : c + B]
        b = len(chunk)
        with torch.enable_grad():
            Xb = X.expand(b, n, d).clone().requires_grad_(True)
            Y = rp.forward(Xb)
            Gb = torch.zeros_like(Y)
            idx = torch.arange(b, device=device)
            jj = torch.tensor(chunk, device=device)
            Gb[idx, jj] = G[jj]
            (gamma,) = torch.autograd.grad(Y, Xb, Gb)
        prod = Xb.detach().float() * gamma.float()
        out[c : c + b] = prod.sum(-1) if reduce else prod
        done += b
        if progress is not None:
            progress(done, len(rows))
    return out


def replay_matrix(model: nn.Module, adapter: ArchAdapter, src: str, tgt: str, h_src: torch.Tensor,
                  g_tgt: torch.Tensor, *, rows: Sequence[int] | None = None, batch_size: int | None = None,
                  progress: Progress | None = None) -> torch.Tensor:
    """The dense [n, n] matrix (rows not in ``rows`` are 0)."""
    n = h_src.shape[0]
    rows = list(range(n)) if rows is None else list(rows)
    A = torch.zeros(n, n, dtype=torch.float32, device=h_src.device)
    if rows:
        A[torch.tensor(rows, device=A.device)] = replay_rows(
            model, adapter, src, tgt, h_src, g_tgt, rows, batch_size=batch_size, progress=progress
        )
    return A


def replay_forward(model: nn.Module, adapter: ArchAdapter, src: str, tgt: str, h_src: torch.Tensor) -> torch.Tensor:
    """The replayed target states for one copy (a check that the maps and masks reproduce the model)."""
    n = h_src.shape[0]
    rp = Replayer(model, adapter, src, tgt, n, device=h_src.device, dtype=h_src.dtype)
    with torch.no_grad():
        return rp.forward(h_src[None])[0]
