"""Hypothesis strategies shared by the test modules (bounded floats, small shapes)."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: (name, params) of every activation with a compiled closed form.
CLOSED_FORM_ACTIVATIONS = [
    ("relu", {}), ("leaky_relu", {"alpha": 0.1}), ("abs", {}), ("identity", {}),
    ("step", {}), ("sign", {}), ("arccos", {"n": 0}), ("arccos", {"n": 2}), ("arccos", {"n": 3}),
    ("erf", {}), ("sin", {}), ("cos", {}), ("gaussian", {}), ("gelu", {}),
]


def activation_id(case):
    name, params = case
    return name + "".join(f"-{k}{v}" for k, v in params.items())


finite = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def data_matrices(draw, min_rows=2, max_rows=7, min_cols=1, max_cols=5):
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(min_cols, max_cols))
    X = draw(hnp.arrays(np.float64, (n, d), elements=finite))
    return X


w_stds = st.floats(0.5, 2.0)
b_stds = st.one_of(st.none(), st.floats(0.0, 1.0))
depths = st.integers(0, 4)
