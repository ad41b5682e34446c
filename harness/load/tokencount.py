"""Tokenizer counts for the records of one part file, added as the spool writes it.

Why not at the end of the step: that meant holding every record and streamed
text of a process until its share was over (memory grew with the step, issue
11 §3). Counting per part keeps one group in memory; the counts equal what
``recordbuild.finalize_records`` gives (``tests/test_load_plan.py``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class TokenCounter:
    """``finalize_records``'s tokenizer counts, applied to one part's Arrow table as the spool writes it.

    Why per part: finalizing once at the end of a process's share meant holding
    every record (and its text) of the step in memory; now each part is final
    when written, so a process holds one row group. It runs in the spool's write
    job, off the event loop (``tokenizers`` and pyarrow release the GIL); the
    tokenizer is loaded once per process.
    """

    def __init__(self, tokenizer_path: str) -> None:
        self.tokenizer_path = tokenizer_path
        self._tok: Any = None
        self._lock = threading.Lock()

    def _tokenizer(self) -> Any:
        with self._lock:
            if self._tok is None:
                from tokenizers import Tokenizer

                self._tok = Tokenizer.from_file(self.tokenizer_path)
            return self._tok

    def __call__(self, table: pa.Table, texts: list[str]) -> pa.Table:
        ok = table.column("error_class").is_null().to_numpy(zero_copy_only=False)
        idx = [i for i in range(table.num_rows) if ok[i] or texts[i]]
        if not idx:
            return table
        encoded = self._tokenizer().encode_batch([texts[i] for i in idx], add_special_tokens=False)
        counts = np.zeros(table.num_rows, dtype=np.int64)
        counts[idx] = [len(e.ids) for e in encoded]
        has = np.zeros(table.num_rows, dtype=bool)
        has[idx] = True
        out_known = table.column("output_tokens").is_valid().to_numpy(zero_copy_only=False)
        fill = has & ~out_known
        client = pc.if_else(pa.array(has), pa.array(counts), table.column("client_output_tokens"))
        output = pc.if_else(pa.array(fill), pa.array(counts), table.column("output_tokens"))
        source = pc.if_else(pa.array(fill), "tokenizer", table.column("token_source"))
        for name, column in (
            ("client_output_tokens", client),
            ("output_tokens", output),
            ("token_source", source),
        ):
            table = table.set_column(table.schema.get_field_index(name), name, column)
        return table
