"""The numbers the seed paper's figures show (arXiv 2509.00024), as plain data: every one read
off its rendered plots (docs/method.md section 8), so approximate ("≈"). Ranges are `(low,
high)`, a single reading `(v, v)`; "a/b" readings of lag pairs are Δ = -1 -> a, Δ = +1 -> b.
Keys: `(bra, PDE, model)`, bra "C" (SMSE), "M" (mass), "E" (energy); class order that of
`pdeinf.config.pde_spec(pde).classes`.
"""
from __future__ import annotations


def _r(a, b=None):
    return (float(a), float(a if b is None else b))


#: Figs. 2, 6, 16-19, 24-25, 28-29: heatmap readings (diagonal, first off-diagonal, notes).
HEATMAPS: dict[tuple[str, str, str], dict] = {
    ("C", "CE", "vit"): {"figure": 2, "diagonal": _r(6.4), "off_diagonal_1": _r(1.4),
                         "note": "≈ first off-diagonal grows to ≈2.5-3 at t ≈ 15"},
    ("C", "CE", "unet"): {"figure": 17, "diagonal": _r(5.0), "off_diagonal_1": _r(2.3), "note": ""},
    ("C", "NS", "vit"): {"figure": 18, "diagonal": _r(4.2), "off_diagonal_1": _r(3.0),
                         "note": "≈ broader band"},
    ("C", "NS", "unet"): {"figure": 19, "diagonal": _r(3.2), "off_diagonal_1": _r(1.6, 2.8),
                          "note": "≈ broad band 1.6-2.8"},
    ("M", "CE", "vit"): {"figure": 6, "diagonal": _r(3.0), "off_diagonal_1": None,
                         "note": "≈ band broader than for H_CC"},
    ("M", "CE", "unet"): {"figure": 25, "diagonal": _r(2.0, 3.0), "off_diagonal_1": None,
                          "note": "≈ 5 at t = 1"},
    ("E", "CE", "vit"): {"figure": 28, "diagonal": None, "off_diagonal_1": None,
                         "note": "like Fig. 6 (no numbers)"},
    ("E", "CE", "unet"): {"figure": 29, "diagonal": None, "off_diagonal_1": None,
                          "note": "like Fig. 28 (no numbers)"},
}

#: Figs. 4, 7, 20-23, 26-27, 30-31: lag-curve medians {Δ: (low, high)} for intra, and the
#: flat inter-class level (low, high).
LAG_CURVES: dict[tuple[str, str, str], dict] = {
    ("C", "CE", "vit"): {"figure": 4, "intra": {
        0: _r(6.4), -1: _r(1.35), 1: _r(1.40), -2: _r(1.0), 2: _r(1.0), -4: _r(0.65), 4: _r(0.65),
        -8: _r(0.45, 0.6), 8: _r(0.45, 0.6)}, "inter": _r(0.05, 0.1)},
    ("C", "CE", "unet"): {"figure": 21, "intra": {
        0: _r(5.0), -1: _r(2.25), 1: _r(2.45), -8: _r(0.7), 8: _r(0.9)}, "inter": _r(0.05, 0.1)},
    ("C", "NS", "vit"): {"figure": 22, "intra": {
        0: _r(4.2), -1: _r(3.0), 1: _r(3.15), -8: _r(1.25), 8: _r(1.5)}, "inter": _r(0.3, 0.4)},
    ("C", "NS", "unet"): {"figure": 23, "intra": {
        0: _r(3.2), -1: _r(2.75), 1: _r(2.8), -8: _r(1.6), 8: _r(1.8)}, "inter": _r(0.15, 0.2)},
    ("M", "CE", "vit"): {"figure": 7, "intra": {
        0: _r(2.8), -1: _r(1.9, 2.0), 1: _r(1.9, 2.0), -2: _r(1.45), 2: _r(1.45), -4: _r(0.85),
        4: _r(0.85), -8: _r(0.3), 8: _r(0.3)}, "inter": _r(0.0)},
    ("M", "CE", "unet"): {"figure": 27, "intra": {
        0: _r(2.6), -1: _r(1.7), 1: _r(1.85), -8: _r(0.5, 0.65), 8: _r(0.5, 0.65)}, "inter": _r(0.0)},
    ("E", "CE", "vit"): {"figure": 30, "intra": {
        0: _r(4.0), -1: _r(2.1), 1: _r(2.2), -2: _r(1.35), 2: _r(1.35), -8: _r(0.4), 8: _r(0.4)},
        "inter": _r(0.0)},
    ("E", "CE", "unet"): {"figure": 31, "intra": {
        0: _r(2.8), -1: _r(1.6), 1: _r(1.6), -8: _r(0.1, 0.25), 8: _r(0.1, 0.25)}, "inter": _r(0.0)},
}

#: Figs. 3, 12-15: time-averaged class matrices. `diagonal` per class (class order of
#: pde_spec); `off_diagonal` range; `cells` single readings {(response, input): value};
#: `saturated` classes whose diagonal is at the colour limit 2.5 (a lower bound).
CLASS_MATRICES: dict[tuple[str, str, str], dict] = {
    ("C", "CE", "vit"): {"figure": 3, "diagonal": (1.3, 1.0, 1.7), "off_diagonal": _r(0.0, 0.15),
                         "cells": {("CE-CRP", "CE-RPUI"): 0.45}, "saturated": ()},
    ("C", "CE", "unet"): {"figure": 13, "diagonal": (1.6, 1.4, 1.55),
                          "off_diagonal": _r(0.05, 0.15), "cells": {}, "saturated": ()},
    ("C", "NS", "vit"): {"figure": 14, "diagonal": (2.5, 1.8, 1.6), "off_diagonal": _r(0.2, 0.6),
                         "cells": {}, "saturated": ("NS-BB",)},
    ("C", "NS", "unet"): {"figure": 15, "diagonal": (2.5, 1.9, 2.3), "off_diagonal": _r(0.1, 0.5),
                          "cells": {}, "saturated": ("NS-BB", "NS-Sines")},
}

#: Figs. 5, 32, 33: interpolation curves. `near`: (d, {model: value}); `crossing`: the zero
#: crossing range of d; `far`: (d, (low, high)) both models.
SIMILARITY: dict[str, dict] = {
    "CE": {"figure": 5, "near": (0.03, {"unet": 2.45, "vit": 1.85}), "crossing": _r(0.7, 0.9),
           "far": (1.0, _r(-0.3, -0.2))},
    "NS": {"figure": 33, "near": (0.05, {"unet": 2.4, "vit": 2.75}), "crossing": _r(2.0),
           "far": (3.5, _r(-0.5))},
}

#: Figs. 8, 34, 35: log10 of the top NTK eigenvalue: median, IQR (q1, q3), whiskers or None.
NTK_TOP_EIGENVALUE: dict[tuple[str, str], dict] = {
    ("CE", "vit"): {"figure": 8, "median": 7.35, "iqr": (7.3, 7.4), "whiskers": None},
    ("CE", "unet"): {"figure": 8, "median": 7.97, "iqr": (7.9, 8.03), "whiskers": (7.7, 8.15)},
    ("NS", "vit"): {"figure": 35, "median": 6.45, "iqr": (6.38, 6.52), "whiskers": None},
    ("NS", "unet"): {"figure": 35, "median": 7.0, "iqr": (6.92, 7.08), "whiskers": None},
}

#: Figs. 9-11: log10 validation SMSE at epoch 1 and at the last epoch (CE 150, NS 100).
VALIDATION: dict[tuple[str, str], dict] = {
    ("CE", "vit"): {"figure": 9, "first": -1.3, "last": -3.1, "last_epoch": 150},
    ("CE", "unet"): {"figure": 9, "first": -1.65, "last": -2.6, "last_epoch": 150},
    ("NS", "vit"): {"figure": 11, "first": -2.22, "last": -5.0, "last_epoch": 100},
    ("NS", "unet"): {"figure": 11, "first": -2.7, "last": -5.0, "last_epoch": 100},
}


def lookup(table: dict, key) -> dict | None:
    """`table[key]` or None (the paper shows no such figure)."""
    return table.get(key)
