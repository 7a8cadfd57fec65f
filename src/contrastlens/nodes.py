"""Node-layer names: the one place where they are spelled, parsed, ordered and classified.

A node of an attribution graph is ``(layer, position)``; the layer is one of

- ``emb``: the input embeddings (the input of block 0; the paper calls it ``-1``);
- ``l.mid``: the residual stream of block ``l`` after its attention sub-block, before its MLP;
- ``l``: the output of block ``l``.

Model order is ``emb, 0.mid, 0, 1.mid, 1, ...``; :func:`layer_index` maps a name to a sortable number
(``emb`` -1, ``l.mid`` l - 0.5, ``l`` l). Between two consecutive node layers lie sub-blocks
(:func:`sub_blocks`), and :func:`transition_kind` says which closed form an adjacent pair has.
Everything that reads or writes node names (the explanation's taps, graphs, neuron drill-down, the CLI)
goes through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from contrastlens.errors import InputError

EMB = "emb"
MID_SUFFIX = ".mid"
_EMB_ALIASES = ("emb", "-1", "embeddings", "input")

TransitionKind = Literal["attn", "mlp", "block", "replay"]


def mid(block: int) -> str:
    """The name of block ``block``'s mid node layer (``"3.mid"``)."""
    return f"{int(block)}{MID_SUFFIX}"


def post(block: int) -> str:
    """The name of block ``block``'s output node layer (``"3"``)."""
    return str(int(block))


def is_mid(name: str) -> bool:
    return name.endswith(MID_SUFFIX)


def is_post(name: str) -> bool:
    return name != EMB and not is_mid(name)


def block_of(name: str) -> int:
    """The block a node layer belongs to (``emb`` is -1)."""
    if name == EMB:
        return -1
    return int(name[: -len(MID_SUFFIX)]) if is_mid(name) else int(name)


def layer_names(num_layers: int, mid_nodes: bool = True) -> list[str]:
    """Node-layer names in model order: ``emb, 0.mid, 0, 1.mid, 1, ...`` (without ``l.mid`` if not ``mid_nodes``)."""
    names = [EMB]
    for i in range(num_layers):
        if mid_nodes:
            names.append(mid(i))
        names.append(post(i))
    return names


def layer_index(name: str) -> float:
    """A sortable position of a node layer in model order: emb -> -1, ``l.mid`` -> l - 0.5, ``l`` -> l."""
    if name == EMB:
        return -1.0
    if is_mid(name):
        return block_of(name) - 0.5
    return float(int(name))


def canonical(name: str | int, num_layers: int | None = None) -> str:
    """The canonical spelling of a node-layer name (``-1``/``embeddings`` -> ``emb``, ``03.mid`` -> ``3.mid``);
    with ``num_layers``, an unknown layer is an :class:`InputError`."""
    s = str(name).strip()
    if s in _EMB_ALIASES:
        s = EMB
    else:
        base, dot, rest = s.partition(".")
        if base.isdigit() and (not dot or rest == "mid"):
            s = f"{int(base)}{dot}{rest}"
    if num_layers is not None and s not in set(layer_names(num_layers, True)):
        raise InputError(f"unknown graph layer {name!r}; use emb, 0..{num_layers - 1} or l.mid")
    return s


def parse_layers(layers: Sequence[str | int] | str | None, num_layers: int, mid_nodes: bool = True) -> list[str]:
    """Node layers in model order. ``None``: every layer (with ``l.mid`` nodes if ``mid_nodes``). Otherwise a
    list (or comma-separated string) of ``emb`` (also ``-1``, the paper's name), block indices and
    ``l.mid`` names; at least two."""
    if layers is None:
        return layer_names(num_layers, mid_nodes)
    if isinstance(layers, str):
        layers = [x for x in layers.replace(" ", "").split(",") if x]
    out: list[str] = []
    for x in layers:
        name = canonical(x, num_layers)
        if name not in out:
            out.append(name)
    if len(out) < 2:
        raise InputError("a graph needs at least two layers")
    return sorted(out, key=layer_index)


def sub_blocks(src: str, tgt: str) -> list[tuple[int, str]]:
    """The sub-blocks between two node layers, in order: ``(block, "attn" | "mlp")``."""
    a, b = layer_index(src), layer_index(tgt)
    if b <= a:
        raise ValueError(f"{tgt!r} does not come after {src!r}")
    ops: list[tuple[int, str]] = []
    x = a
    while x < b:
        if x == int(x):  # a block output (or emb = -1): next is the attention of block x+1
            ops.append((int(x) + 1, "attn"))
        else:  # a mid: next is the MLP of block x+0.5
            ops.append((int(x + 0.5), "mlp"))
        x += 0.5
    return ops


def transition_kind(src: str, tgt: str) -> tuple[TransitionKind, int]:
    """``("attn", l)`` for ``l-1 -> l.mid``, ``("mlp", l)`` for ``l.mid -> l``, ``("block", l)`` for ``l-1 -> l``
    (one whole block); ``("replay", -1)`` for any other pair."""
    ops = sub_blocks(src, tgt)
    if len(ops) == 1:
        blk, kind = ops[0]
        return ("attn" if kind == "attn" else "mlp"), blk
    if len(ops) == 2 and ops[0][0] == ops[1][0]:
        return "block", ops[0][0]
    return "replay", -1


__all__ = [
    "EMB", "MID_SUFFIX", "block_of", "canonical", "is_mid", "is_post", "layer_index", "layer_names", "mid",
    "parse_layers", "post", "sub_blocks", "transition_kind",
]
