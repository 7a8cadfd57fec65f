"""The exact closed form of an attention transition ``l-1 -> l.mid`` (and of a whole block ``l-1 -> l``).

Under the rules, state i reaches position j != i of the next state only through key k_i and value v_i of
the attention at query row j, and both are degree-1 homogeneous in h_i once constant (bias) parts are
split off: detached normalisers make every norm linear, RoPE is linear, projections are linear. So
Gradient x Input of h_i collapses to the maps' own outputs. Per query head, with a the causal softmax
(the model's scale, mask and sliding window), e_j = the head's slice of the modified gradient at the
attention output (W_o^T m_j, with a post-attention norm folded in), o_j = sum_i a_ji v_i:

    term_v[j, i] = c_v * a_ji * (v'_i . e_j)
    term_k[j, i] = c_k * a_ji * ((v_i - o_j) . e_j) * s'_ji,      s'_ji = scale * q_j . k'_i

where v', k' are the bias-free (homogeneous) parts of v and k, and c_v = 1/2, c_k = 1/4 under AttnLRP
(c_v = 1, c_k = 0 under CP-LRP). A[j, i] = sum over query heads for i != j (GQA: the heads sharing a KV
head all use it), and the diagonal follows from the column-sum invariant
A[i, i] = R_s[i] - sum_{j != i} A[j, i]: the residual, the self term and (for a whole block) the MLP at i
are position-local, so everything else is automatically included.

The cost is one attention-sized computation per layer, in row blocks: no n x n matrix is held.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from contrastlens.errors import ContrastLensError
from contrastlens.graph._model import (
    BlockView,
    causal_mask,
    has_affine_constant,
    has_qk_norm,
    kernel_inputs,
)

_NEG = -1e30


class ExactNotApplicable(ContrastLensError):
    """The closed form does not cover this block (the caller falls back to replay)."""


def _kernel_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                   window: int | None) -> torch.Tensor:
    """softmax(scale q k^T + causal mask) v for q [H, n, hd], k, v [KV, n, hd] -> [n, H * hd]."""
    H, n, hd = q.shape
    g = H // k.shape[0]
    kr = k.repeat_interleave(g, dim=0)
    vr = v.repeat_interleave(g, dim=0)
    if window:
        mask = causal_mask(n, window, device=q.device)
        o = F.scaled_dot_product_attention(q[None], kr[None], vr[None], attn_mask=mask, scale=scale)
    else:
        o = F.scaled_dot_product_attention(q[None], kr[None], vr[None], is_causal=True, scale=scale)
    return o[0].transpose(0, 1).reshape(n, H * hd)


def head_gradient(view: BlockView, z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Modified gradient at the attention output (before ``o_proj``) given g~ = ``m`` at the residual:
    the backward of ``attn_out_norm(o_proj(z))`` (normaliser detached by the rules). [n, H * hd]."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        y = view.o_proj(zz)
        if view.attn_out_norm is not None:
            y = view.attn_out_norm(y)
        (e,) = torch.autograd.grad(y, zz, m.to(y.dtype))
    return e


class ExactAttention:
    """Off-diagonal edges of the attention transition into block ``view`` (source state ``h`` [n, d],
    g~ at the block's mid state ``m`` [n, d]) in row blocks, plus the diagonal from the column sums.

    ``c_v``, ``c_k``: the rule's gradient factors on value and key. Must run under the rules (the
    post-attention norm's backward is the rule's)."""

    def __init__(self, view: BlockView, h: torch.Tensor, m: torch.Tensor, pe, *, c_v: float, c_k: float,
                 block_rows: int | None = None, memory_budget: int = 512 << 20) -> None:
        self.view = view
        n, _ = h.shape
        self.n = n
        self.c_v, self.c_k = float(c_v), float(c_k)
        affine = has_affine_constant(view)
        if affine and has_qk_norm(view):
            raise ExactNotApplicable(
                f"block {view.index}: q/k-norm after biased projections is not homogeneous; use replay"
            )
        with torch.no_grad():
            xin = view.attn_in_norm(h[None])[0] if view.attn_in_norm is not None else h
            ki = kernel_inputs(view, xin, pe)
            self.scale, self.window = ki.scale, ki.window
            H, _, hd = ki.q.shape
            KV = ki.k.shape[0]
            self.H, self.KV, self.G, self.hd = H, KV, H // KV, hd
            f32 = torch.float32
            # the attention output o (one efficient causal kernel call per layer): o_j . e_j for every row
            # comes from it, and the post-attention norm's backward needs it
            z = _kernel_output(ki.q, ki.k, ki.v, self.scale, self.window)  # [n, H * hd]
            e = head_gradient(view, z, m).to(f32).reshape(n, H, hd).transpose(0, 1)  # [H, n, hd]
            o = z.to(f32).reshape(n, H, hd).transpose(0, 1)
            oe = (o * e).sum(-1, keepdim=True)  # [H, n, 1]
            del z, o
            self.affine = affine
            # the fast path folds c_v into e (and o . e) and the scale into q
            self.fast = not affine and self.c_v != 0.0
            ev = self.c_v if self.fast else 1.0
            self.q = (ki.q.to(f32) * self.scale).reshape(KV, self.G, n, hd)
            self.e = (e * ev).reshape(KV, self.G, n, hd)
            self.oe = (oe * ev).reshape(KV, self.G, n, 1)
            self.k = ki.k.to(f32)
            self.v = ki.v.to(f32)
            if affine:
                if view.attn_in_norm is not None and getattr(view.attn_in_norm, "bias", None) is not None:
                    const = view.attn_in_norm.bias.expand(n, -1)
                else:
                    const = torch.zeros_like(xin)
                kc = kernel_inputs(view, const.to(xin.dtype), pe)
                self.k_h = self.k - kc.k.to(f32)
                self.v_h = self.v - kc.v.to(f32)
            else:
                self.k_h, self.v_h = self.k, self.v
        per_row = H * n * 4 * (8 if affine else 6)
        # as many rows per block as the budget allows: few, large tensor operations (the causal upper
        # triangle beyond each block's last row is skipped)
        self.block_rows = block_rows or max(8, min(n, memory_budget // max(per_row, 1)))
        self.active = self.e.abs().amax(dim=(0, 1, 3)) > 0  # rows that receive relevance
        self._bufs: list[torch.Tensor | None] = [None, None]

    # ------------------------------------------------------------------------------------ blocks
    def block(self, j0: int, j1: int) -> tuple[int, torch.Tensor]:
        """Rows j0..j1-1 (target positions): returns (c0, B) with B[r, c] = A[j0 + r, c0 + c] for the
        columns c0..j1-1 that row block can reach (causal / window); the diagonal is left at 0."""
        return self.rows(torch.arange(j0, j1, device=self.q.device))

    def rows(self, idx: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Rows ``idx`` (sorted target positions): (c0, B) with B[r, c] = A[idx[r], c0 + c] for columns
        c0..max(idx); entries a row cannot reach are 0, and so is the diagonal."""
        KV, G, hd = self.KV, self.G, self.hd
        b = int(idx.numel())
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        c0 = max(0, lo - self.window + 1) if self.window else 0
        qb = self.q[:, :, idx].reshape(KV, G * b, hd)
        eb = self.e[:, :, idx].reshape(KV, G * b, hd)
        oe = self.oe[:, :, idx].reshape(KV, G * b, 1)
        w = hi - c0
        s = torch.bmm(qb, self.k[:, c0:hi].transpose(1, 2), out=self._buf(0, (KV, G * b, w)))  # scaled scores
        # masked scores get a large finite negative value: softmax gives exactly 0 there and a * s stays 0
        if hi - lo == b and not self.window:  # contiguous causal rows: only the square [lo, hi) is masked
            tri = torch.ones(b, b, dtype=torch.bool, device=s.device).triu_(1)
            s[:, :, lo - c0 :].masked_fill_(tri.repeat(G, 1)[None], _NEG)
        else:
            cols = torch.arange(c0, hi, device=s.device)[None, :]
            keep = cols <= idx[:, None]
            if self.window:
                keep &= cols > idx[:, None] - self.window
            s.masked_fill_(~keep.repeat(G, 1)[None], _NEG)
        a = torch.softmax(s, dim=-1)
        ve = torch.bmm(eb, self.v[:, c0:hi].transpose(1, 2), out=self._buf(1, (KV, G * b, w)))  # (c_v) v_i . e_j
        if self.fast:
            # c_v ve + c_k (ve - oe) s = ve' (a + r u) - r oe' u,  u = a s, ' = times c_v, r = c_k / c_v
            r = self.c_k / self.c_v
            s.mul_(a)
            a.add_(s, alpha=r)
            t2 = ve.mul_(a).addcmul_(s, oe, value=-r)
        else:
            s_h = torch.bmm(qb, self.k_h[:, c0:hi].transpose(1, 2)) if self.affine else s
            t2 = ve.sub_(oe).mul_(s_h).mul_(self.c_k)
            if self.c_v:
                t2.add_(torch.bmm(eb, self.v_h[:, c0:hi].transpose(1, 2)), alpha=self.c_v)
            t2.mul_(a)
        out = t2.reshape(KV, G, b, -1).sum((0, 1))  # [b, w]
        out[torch.arange(b, device=out.device), idx - c0] = 0.0
        return c0, out

    def _buf(self, k: int, shape: tuple[int, ...]) -> torch.Tensor:
        """A reused scratch tensor of ``shape`` (no fresh allocation per block)."""
        numel = 1
        for d in shape:
            numel *= d
        cur = self._bufs[k]
        if cur is None or cur.numel() < numel:
            cur = self._bufs[k] = torch.empty(numel, dtype=torch.float32, device=self.q.device)
        return cur[:numel].view(shape)

    def blocks(self) -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
        """(rows, c0, block) over every target row that receives relevance, block by block: B[r, c] =
        A[rows[r], c0 + c]. Rows whose gradient is zero (e.g. all but the last at the last layer) have
        no edges and are skipped."""
        step = self.block_rows
        dev = self.q.device
        if bool(self.active.all()):
            for j0 in range(0, self.n, step):
                idx = torch.arange(j0, min(self.n, j0 + step), device=dev)
                c0, blk = self.rows(idx)
                yield idx, c0, blk
        else:
            act = torch.nonzero(self.active).flatten()
            for k in range(0, act.numel(), step):
                idx = act[k : k + step]
                c0, blk = self.rows(idx)
                yield idx, c0, blk


def dense_attention_matrix(ex: ExactAttention, r_src: torch.Tensor) -> torch.Tensor:
    """The full [n, n] matrix (small n only: tests and ``matrix()``)."""
    n = ex.n
    A = torch.zeros(n, n, dtype=torch.float32, device=ex.q.device)
    cs = torch.zeros(n, dtype=torch.float64, device=ex.q.device)
    for idx, c0, blk in ex.blocks():
        A[idx, c0 : c0 + blk.shape[1]] = blk
        cs[c0 : c0 + blk.shape[1]] += blk.sum(0, dtype=torch.float64)
    idx = torch.arange(n, device=A.device)
    A[idx, idx] = (r_src.to(torch.float64) - cs).to(torch.float32)
    return A
