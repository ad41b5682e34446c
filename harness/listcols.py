"""List columns (``chunk_times_ns``, ``chunk_tokens``) worked on as Arrow arrays, never per request.

Why a module of its own: a million requests of 128 chunks are 128 million
stamps; a Python loop over requests (or a numpy object per request) costs
minutes and gigabytes, while ``pyarrow.compute`` on the list arrays and numpy
on their flattened values cost seconds (issue 11 §3). ``harness.metrics``
defines what is computed; this module only computes it, exactly as the
per-request definitions do (``tests/test_metrics_vectorised.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NS_PER_MS = 1e6


def list_array(
    values: pd.Series | pa.Array | pa.ChunkedArray, item: pa.DataType
) -> pa.ListArray | pa.ChunkedArray:
    """A list column as Arrow list data (chunks kept as read: no copy), whatever the frame holds.

    Why: ``read_records``-frames keep list columns Arrow-backed (zero copy), while
    hand-built frames hold Python lists or numpy arrays; the vectorised metrics
    below need one shape. Missing lists become nulls (length 0).
    """
    if isinstance(values, pd.Series) and not isinstance(values.dtype, pd.ArrowDtype):
        arr: pa.Array | pa.ChunkedArray = pa.array(values, type=pa.list_(item), from_pandas=True)
    else:
        arr = pa.array(values) if isinstance(values, pd.Series) else values
    if isinstance(arr, pa.ChunkedArray) and not arr.num_chunks:
        arr = pa.array([], type=pa.list_(item))
    if arr.type != pa.list_(item):
        arr = arr.cast(pa.list_(item))
    return arr


def list_lengths(arr: pa.ListArray | pa.ChunkedArray) -> np.ndarray:
    """Each row's list length (0 for a null list), as int64."""
    return pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype("int64")


def list_flat(arr: pa.ListArray | pa.ChunkedArray, dtype: str) -> np.ndarray:
    """The concatenated list items of every row, in row order (null lists contribute nothing)."""
    return pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def list_sums(values: pd.Series | pa.Array) -> np.ndarray:
    """Per-row sum of a list column; NaN for an empty or missing list."""
    arr = list_array(values, pa.int64())
    n = list_lengths(arr)
    if n.size == 0:
        return np.empty(0, dtype="float64")
    parent = np.repeat(np.arange(n.size), n)
    sums = np.bincount(parent, weights=list_flat(arr, "float64"), minlength=n.size)
    return np.where(n > 0, sums, np.nan)


def itl_from_lists(
    times: pa.ListArray | pa.ChunkedArray, tokens: pa.ListArray | pa.ChunkedArray
) -> np.ndarray:
    """Pooled ITL samples (ms) of all rows of two list columns, vectorised, in row order.

    Per row: chunks are weighted by their token counts when the row has one count
    per chunk, else one token each; zero-token chunks (role/usage-only) are
    skipped; the gap to a chunk of k tokens gives k samples of gap/k. Rows are
    never bridged: a gap is taken only between two kept chunks of one row.
    """
    n_t = list_lengths(times)
    if n_t.sum() < 2:
        return np.empty(0)
    t = list_flat(times, "int64")
    n_k = pc.list_value_length(tokens).fill_null(-1).to_numpy(zero_copy_only=False).astype("int64")
    use = (n_k == n_t) & (n_t > 0)
    k = np.ones(t.size, dtype="int64")
    if use.any():
        k[np.repeat(use, n_t)] = list_flat(tokens.filter(pa.array(use)), "int64")
    keep = k > 0
    if keep.all():  # the common case: a gap is within one row unless it starts a row (no parent array)
        starts = np.cumsum(n_t)[:-1]
        same = np.ones(t.size - 1, dtype=bool)
        same[starts[(starts > 0) & (starts < t.size)] - 1] = False
    else:
        parent = np.repeat(np.arange(n_t.size), n_t)[keep]
        t, k = t[keep], k[keep]
        same = parent[1:] == parent[:-1]
    gaps_ms = np.diff(t)[same] / NS_PER_MS
    weight = k[1:][same]
    if (weight == 1).all():  # one token per chunk: gap/1 repeated once is the gap itself
        return gaps_ms
    return np.repeat(gaps_ms / weight, weight)


__all__ = ["itl_from_lists", "list_array", "list_flat", "list_lengths", "list_sums"]
