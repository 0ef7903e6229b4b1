"""A short text form of a composed network, e.g. ``"dense(1.5,0.1) relu dense erf dense"``.

Used by the command line (``infntk kernel --layers ...``) and by the scikit-learn kernels
(``infntk.sklearn.NTK(network="...")``), where a string keeps ``get_params``/``clone`` simple.

Grammar (items separated by spaces; spaces inside parentheses are ignored)::

    layers   := item ...
    item     := "dense" ["(" w_std ["," b_std ["," parameterization]] ")"]
              | "layernorm"
              | "residual" ["(" alpha ")"] "[" layers "]"
              | "conv" ["(" filter ["," padding ["," w_std ["," b_std]]] ")"]
              | "avgpool" ["(" window ")"] | "flatten" | "gap"     (images)
              | NAME ["(" key=value, ... ")"]          (any registered activation)

``dense`` alone is ``Dense(1.0, 0.0)``; ``b_std`` may be ``none`` (no bias parameters); the
arguments of ``dense`` and ``residual`` may also be given as ``key=value``
(``dense(w_std=1.5, parameterization=standard)``). Activation parameters are keywords:
``leaky_relu(alpha=0.1)``, ``elu(alpha=1.0)``, ``arccos(n=2)``.

>>> parse_layers("dense(1.5,0.1) relu residual(0.5)[erf dense(1.4,0.1)] layernorm dense")
[Dense(1.5, 0.1), Activation('relu'), Residual(layers=(Activation('erf'), Dense(1.4, 0.1)), alpha=0.5), LayerNorm(), Dense(1, 0)]
"""
from __future__ import annotations

import re

from .layers import Activation, Dense, LayerNorm, Residual

__all__ = ["parse_layers", "GRAMMAR"]

#: One-paragraph summary of the grammar (the command line's ``--help`` shows it).
GRAMMAR = ("space-separated layers: dense(w_std[,b_std[,parameterization]]) (plain 'dense' is "
           "dense(1,0); b_std 'none' = no biases), an activation name with keyword parameters "
           "(relu, erf, leaky_relu(alpha=0.1), ... any registered name), layernorm, and "
           "residual(alpha)[ ... ] with the block in brackets; e.g. "
           "\"dense(1.5,0.1) residual(0.5)[relu dense(1.4,0.1)] layernorm erf dense\"; for "
           "images (n, H, W, C): conv(filter,padding,w_std,b_std) (padding same/valid/circular), "
           "avgpool(window), then flatten or gap, then dense/activations, e.g. "
           "\"conv(3,same,1.5,0.1) relu conv(3,same,1.5,0.1) relu gap dense(1.5,0.1)\"")

_TOKEN = re.compile(r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<sym>[()\[\],=]))")


#: convolutional items: name -> (class in infntk.conv, its parameters in order)
_CONV_ITEMS = {"conv": ("Conv", ("filter", "padding", "w_std", "b_std")),
               "avgpool": ("AvgPool", ("window",)),
               "flatten": ("Flatten", ()),
               "gap": ("GlobalAvgPool", ()),
               "globalavgpool": ("GlobalAvgPool", ())}


def _tokens(text):
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            bad = text[pos:].lstrip()[:1]
            raise _error(text, pos + len(text[pos:]) - len(text[pos:].lstrip()),
                         f"unexpected character {bad!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out.append(("end", "", len(text)))
    return out


def _error(text, pos, msg):
    return ValueError(f"layers: {msg} at position {pos} of {text!r} (grammar: "
                      "infntk.layer_spec, or infntk kernel --help).")


def _value(kind, tok):
    if kind == "num":
        return float(tok) if any(c in tok for c in ".eE") else int(tok)
    return None if tok.lower() == "none" else tok


def parse_layers(text):
    """The list of layer values described by ``text`` (grammar in the module docstring).

    Parameters
    ----------
    text : str

    Returns
    -------
    list of Dense, Activation, Residual, LayerNorm
        Pass it to :class:`infntk.Network`.

    Raises
    ------
    ValueError
        Naming the position of the problem (unknown activation names list the valid ones).
    """
    if not isinstance(text, str):
        raise TypeError(f"layers must be a string, got {type(text).__name__}.")
    toks = _tokens(text)
    i = 0

    def args():
        nonlocal i
        pos, kw = [], {}
        if toks[i][1] != "(":
            return pos, kw
        i += 1
        while True:
            kind, tok, at = toks[i]
            if kind == "sym" and tok == ")" and not pos and not kw:
                i += 1
                return pos, kw
            if kind not in ("num", "name"):
                raise _error(text, at, f"expected a value, got {tok or 'the end'!r}")
            if kind == "name" and toks[i + 1][1] == "=":
                vkind, vtok, vat = toks[i + 2]
                if vkind not in ("num", "name"):
                    raise _error(text, vat, f"expected a value after '{tok}='")
                if tok in kw:
                    raise _error(text, at, f"parameter {tok!r} given twice")
                kw[tok] = _value(vkind, vtok)
                i += 3
            else:
                if kw:
                    raise _error(text, at, "positional value after a key=value")
                pos.append(_value(kind, tok))
                i += 1
            kind, tok, at = toks[i]
            i += 1
            if tok == ")":
                return pos, kw
            if tok != ",":
                raise _error(text, at, f"expected ',' or ')', got {tok or 'the end'!r}")

    def build(name, at, pos, kw, names):
        if len(pos) > len(names):
            raise _error(text, at, f"{name} takes at most {len(names)} values "
                                   f"({', '.join(names)}), got {len(pos)}")
        out = dict(zip(names, pos))
        for k in kw:
            if k not in names:
                raise _error(text, at, f"{name} has no parameter {k!r} (it has "
                                       f"{', '.join(names)})")
            if k in out:
                raise _error(text, at, f"{name}: {k!r} given twice")
        out.update(kw)
        return out

    def seq(closing):
        nonlocal i
        layers = []
        while True:
            kind, tok, at = toks[i]
            if kind == "end" or (kind == "sym" and tok == "]"):
                if (kind == "end") != (closing is None):
                    raise _error(text, at, "missing ']'" if closing is not None
                                 else "unmatched ']'")
                if not layers:
                    raise _error(text, at, "expected at least one layer")
                i += 1
                return layers
            if kind != "name":
                raise _error(text, at, f"expected a layer name, got {tok!r}")
            i += 1
            name = tok.lower()
            pos, kw = args()
            try:
                if name == "dense":
                    layers.append(Dense(**build(name, at, pos, kw,
                                                ("w_std", "b_std", "parameterization"))))
                elif name == "layernorm":
                    build(name, at, pos, kw, ())
                    layers.append(LayerNorm())
                elif name in _CONV_ITEMS:
                    from . import conv     # the convolutional layers (images)
                    cls, names = _CONV_ITEMS[name]
                    layers.append(getattr(conv, cls)(**build(name, at, pos, kw, names)))
                elif name == "residual":
                    a = build(name, at, pos, kw, ("alpha",))
                    if toks[i][1] != "[":
                        raise _error(text, toks[i][2], "residual needs its block in brackets, "
                                                       "e.g. residual(0.5)[relu dense]")
                    i += 1
                    layers.append(Residual(seq("]"), **a))
                else:
                    if pos:
                        raise _error(text, at, f"activation parameters are keywords, e.g. "
                                               f"{name}(alpha={pos[0]})")
                    layers.append(Activation(name, **kw))
            except (TypeError, ValueError) as exc:
                if str(exc).startswith("layers:"):
                    raise
                raise _error(text, at, str(exc).rstrip(".")) from None

    return seq(None)
