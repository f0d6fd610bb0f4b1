"""A real writer process for the concurrency and crash tests.

``python -m tests.ledger.writer_proc URL KEY WRITER COUNT BATCH`` appends COUNT events
(``{"writer": WRITER, "i": i}``), in batches of BATCH (1 = ``append``), and prints
each sequence number on its own line, flushed, as soon as ``append`` returned it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from trainguard.core.keys import load_signing_key
from trainguard.ledger import open_ledger


def main(argv: list[str]) -> int:
    url, key_path, writer, count, batch = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    key = load_signing_key(Path(key_path)) if key_path != "-" else None
    out = sys.stdout
    with open_ledger(url, signing_key=key, head_interval=50) as ledger:
        i = 0
        while count <= 0 or i < count:
            size = batch if count <= 0 else min(batch, count - i)
            if size == 1:
                seqs = [ledger.append("step", {"writer": writer, "i": i}, run=writer)]
            else:
                items = [
                    {"kind": "step", "payload": {"writer": writer, "i": i + j}, "run": writer}
                    for j in range(size)
                ]
                seqs = ledger.append_many(items)
            i += len(seqs)
            out.write("".join(f"{s}\n" for s in seqs))
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
