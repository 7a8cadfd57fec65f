"""Declarative access to the pieces of a decoder block that the graph code needs.

Everything here is driven by the :class:`~contrastlens.adapters.ArchAdapter`: the sub-block maps
(attention sub-block, MLP sub-block) are assembled from the adapter's parts, the rotary position
embeddings come from the model's own rotary module, and the attention kernel inputs (q, k, v after
q/k-norm and RoPE, the scale, the sliding window) are captured by routing the attention module through a
capturing attention function for one call. No architecture's forward code is copied.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from contrastlens.adapters import ArchAdapter

_CAPTURE_KEY = "contrastlens_capture"
_CAPTURE_HOOKS: dict[int, Callable] = {}


# ------------------------------------------------------------------------------------ sub-block maps
@dataclass
class BlockView:
    """The parts of one decoder block, looked up once through the adapter."""

    index: int
    block: nn.Module
    attn: nn.Module
    attn_in_norm: nn.Module | None
    attn_out_norm: nn.Module | None
    o_proj: nn.Module
    mlp: nn.Module
    mlp_in_norm: nn.Module | None
    mlp_out_norm: nn.Module | None
    down_proj: nn.Module | None


def block_view(model: nn.Module, adapter: ArchAdapter, index: int) -> BlockView:
    blk = adapter.blocks(model)[index]
    b = adapter.block
    down = adapter.part(blk, "down_proj") if b.down_proj else None
    if down is None:  # GPT-2: the MLP output projection
        down = getattr(adapter.part(blk, "mlp"), "c_proj", None)
    return BlockView(
        index=index,
        block=blk,
        attn=adapter.part(blk, "attention"),
        attn_in_norm=adapter.part(blk, "attn_in_norm") if b.attn_in_norm else None,
        attn_out_norm=adapter.part(blk, "attn_out_norm") if b.attn_out_norm else None,
        o_proj=adapter.part(blk, "o_proj"),
        mlp=adapter.part(blk, "mlp"),
        mlp_in_norm=adapter.part(blk, "mlp_in_norm") if b.mlp_in_norm else None,
        mlp_out_norm=adapter.part(blk, "mlp_out_norm") if b.mlp_out_norm else None,
        down_proj=down,
    )


def sliding_window(view: BlockView) -> int | None:
    """The attention window of a block (None: full causal attention)."""
    if "sliding_window" in vars(view.attn) or hasattr(type(view.attn), "sliding_window"):
        w = getattr(view.attn, "sliding_window", None)
    else:  # Mistral passes the config's window to every layer
        w = getattr(getattr(view.attn, "config", None), "sliding_window", None)
    return int(w) if w else None


def causal_mask(n: int, window: int | None, *, device, dtype=torch.bool, col0: int = 0, row0: int = 0,
                rows: int | None = None) -> torch.Tensor:
    """Boolean [rows, n - col0] mask, True where query ``row0 + r`` may attend key ``col0 + c``."""
    rows = n - row0 if rows is None else rows
    q = torch.arange(row0, row0 + rows, device=device)[:, None]
    k = torch.arange(col0, n, device=device)[None, :]
    keep = k <= q
    if window:
        keep &= k > q - window
    return keep


def additive_mask(n: int, window: int | None, *, device, dtype) -> torch.Tensor:
    """An explicit [1, 1, n, n] additive causal mask (0 where allowed, the dtype's minimum elsewhere)."""
    keep = causal_mask(n, window, device=device)
    m = torch.zeros(n, n, device=device, dtype=dtype)
    m.masked_fill_(~keep, torch.finfo(dtype).min)
    return m[None, None]


class PositionEmbeddings:
    """The rotary (cos, sin) per block, computed with the model's own rotary module, cached per layer type."""

    def __init__(self, model: nn.Module, adapter: ArchAdapter, n: int, *, device, dtype) -> None:
        self.base = adapter.base(model)
        self.rot = getattr(self.base, "rotary_emb", None)
        cfg = model.config
        cfg = getattr(cfg, "get_text_config", lambda: cfg)()
        self.layer_types = getattr(cfg, "layer_types", None)
        self.n, self.device, self.dtype = n, device, dtype
        self._cache: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
        self._typed = False
        if self.rot is not None:
            params = inspect.signature(self.rot.forward).parameters
            self._typed = "layer_type" in params

    def __call__(self, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.rot is None:
            return None
        lt = self.layer_types[block] if (self._typed and self.layer_types) else None
        if lt not in self._cache:
            x = torch.zeros(1, self.n, 1, device=self.device, dtype=self.dtype)
            pos = torch.arange(self.n, device=self.device)[None]
            with torch.no_grad():
                self._cache[lt] = self.rot(x, pos, lt) if self._typed else self.rot(x, pos)
        return self._cache[lt]


def call_attention(view: BlockView, x: torch.Tensor, pe, mask) -> torch.Tensor:
    """The attention module's output (before any post-attention norm) for input ``x`` [B, n, d]."""
    kwargs = {"attention_mask": mask}
    if pe is not None:
        kwargs["position_embeddings"] = pe
    out = view.attn(hidden_states=x, **kwargs)
    return out[0] if isinstance(out, tuple | list) else out


def attn_sub_block(view: BlockView, x: torch.Tensor, pe, mask) -> torch.Tensor:
    """Residual stream after block ``view``'s attention: ``x + out_norm(attn(in_norm(x)))``."""
    a = view.attn_in_norm(x) if view.attn_in_norm is not None else x
    y = call_attention(view, a, pe, mask)
    if view.attn_out_norm is not None:
        y = view.attn_out_norm(y)
    return x + y


def mlp_sub_block(view: BlockView, x: torch.Tensor) -> torch.Tensor:
    """Block output: ``x + out_norm(mlp(in_norm(x)))``."""
    a = view.mlp_in_norm(x) if view.mlp_in_norm is not None else x
    y = view.mlp(a)
    if view.mlp_out_norm is not None:
        y = view.mlp_out_norm(y)
    return x + y


# ------------------------------------------------------------------------------- kernel-input capture
def _capture_interface(module, query, key, value, attention_mask, **kwargs):
    return _CAPTURE_HOOKS[id(module)](module, query, key, value, attention_mask, **kwargs)


@contextlib.contextmanager
def _capture_registered() -> Iterator[None]:
    """The capturing function is known to transformers' attention interface only while a capture runs
    (it is removed again afterwards, so nothing outlives the call)."""
    from transformers.modeling_utils import AttentionInterface

    mapping = AttentionInterface._global_mapping
    added = _CAPTURE_KEY not in mapping
    if added:
        AttentionInterface.register(_CAPTURE_KEY, _capture_interface)
    try:
        yield
    finally:
        if added:
            mapping.pop(_CAPTURE_KEY, None)


@contextlib.contextmanager
def capture_kernel(attn: nn.Module, fn: Callable) -> Iterator[None]:
    """Route ``attn``'s attention-kernel call to ``fn(module, q, k, v, mask, **kwargs)`` for the duration.

    Only this module instance is affected (it gets a private copy of its config naming the capturing
    function); the model's other modules and the shared config are untouched, and the capturing function
    is registered with transformers' attention interface only for the duration.
    """
    cfg = attn.config
    private = copy.copy(cfg)
    private._attn_implementation_internal = _CAPTURE_KEY
    _CAPTURE_HOOKS[id(attn)] = fn
    attn.config = private
    try:
        with _capture_registered():
            yield
    finally:
        attn.config = cfg
        _CAPTURE_HOOKS.pop(id(attn), None)


@dataclass
class KernelInputs:
    """What the attention kernel of one block receives (batch 1): q [H, n, hd], k and v [KV, n, hd]."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    window: int | None


def kernel_inputs(view: BlockView, x: torch.Tensor, pe) -> KernelInputs:
    """q, k, v (after q/k-norm and RoPE), scale and sliding window of block ``view`` for input ``x`` [n, d]
    (the attention module's input, i.e. after the input norm). The kernel itself is not run."""
    got: dict = {}

    def fn(module, query, key, value, attention_mask, **kwargs):
        got.update(q=query, k=key, v=value, scale=kwargs.get("scaling"), window=kwargs.get("sliding_window"))
        b, h, n, hd = query.shape
        return query.new_zeros(b, n, h, hd), None

    with torch.no_grad(), capture_kernel(view.attn, fn):
        call_attention(view, x[None], pe, None)
    scale = got["scale"]
    if scale is None:
        scale = got["q"].shape[-1] ** -0.5
    return KernelInputs(got["q"][0], got["k"][0], got["v"][0], float(scale),
                        int(got["window"]) if got["window"] else None)


def has_affine_constant(view: BlockView) -> bool:
    """Whether k or v carry a constant (bias) part: projection biases or an input-norm bias."""
    mods = [view.attn_in_norm]
    for name in ("q_proj", "k_proj", "v_proj", "c_attn"):
        mods.append(getattr(view.attn, name, None))
    return any(getattr(m, "bias", None) is not None for m in mods if m is not None)


def has_qk_norm(view: BlockView) -> bool:
    return any(getattr(view.attn, n, None) is not None for n in ("q_norm", "k_norm"))


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (CUDA: the allocator's view; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
