"""Run files: atomic writes (finished results are never left half-written: temp file + rename), and the run-config
dicts that stay the same when an option is added at its old behaviour."""
from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary sibling path; on success it replaces ``path`` atomically, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def append_csv_row(path: Path | str, header: list, row: list) -> None:
    """Append one row (floats to 4 decimals), writing the header first if the file is new. Curves only: a row
    lost in a crash is rewritten on resume (see ``truncate_csv_rows``)."""
    import csv
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(header)
        w.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row])


def truncate_csv_rows(path: Path | str, max_key: float) -> None:
    """Keep the header and the rows whose first column is <= max_key (rows written after a checkpoint)."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = lines[:1] + [ln for ln in lines[1:] if float(ln.split(",")[0]) <= max_key]
    atomic_write_text(path, "\n".join(keep) + "\n")


def without_options_off(d: dict, options: dict) -> dict:
    """A copy of config dict ``d`` less the entries of ``options`` ({key path (tuple): 'off' value}) that hold their
    'off' value. For options added after runs were made: at their old behaviour they are absent from a run's saved
    config, so those runs stay current."""
    d = copy.deepcopy(d)
    for path, off in options.items():
        parent = d
        for key in path[:-1]:
            parent = parent[key]
        if parent.get(path[-1], off) == off:
            parent.pop(path[-1], None)
    return d
