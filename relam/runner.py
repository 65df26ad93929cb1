"""Run the numbered notebooks of a profile headless with papermill.

``python -m relam.runner --profile smoke`` executes ``notebooks/NN_*.ipynb`` in order, passing
``profile`` and ``results_dir`` as parameters, and writes the executed copies to
``<results>/notebooks/``. It stops at the first failing notebook and says which one, where its
executed copy (with the traceback) is, and how to rerun only it. Every stage skips work that is
already finished, so rerunning after a failure resumes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from relam.config import ConfigError, load_config
from relam.platform import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def numbered_notebooks(only: list[str] | None = None) -> list[Path]:
    books = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in books}
        if unknown:
            raise SystemExit(f"no notebook numbered {sorted(unknown)}; have: {[p.name for p in books]}")
        books = [p for p in books if p.name[:2] in wanted]
    return books


def run(profile: str, results_dir: str | None = None, only: list[str] | None = None,
        kernel: str = "python3") -> int:
    import papermill as pm

    try:
        cfg = load_config(profile, {"results_dir": results_dir} if results_dir else None)
    except ConfigError as e:
        print(f"[relam] {e}", file=sys.stderr)
        return 2
    out_dir = cfg.out / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)  # papermill does not create it
    books = numbered_notebooks(only)
    t_all = time.perf_counter()
    for nb in books:
        target = out_dir / nb.name
        print(f"[relam] {profile}: running {nb.name} -> {target}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(target), parameters={"profile": profile, "results_dir": str(cfg.out)},
                                kernel_name=kernel, cwd=str(NOTEBOOK_DIR), progress_bar=False,
                                log_output=True, stdout_file=sys.stdout, stderr_file=sys.stderr)
        except pm.PapermillExecutionError as e:
            print(f"\n[relam] FAILED in {nb.name}, cell {e.cell_index}: {e.ename}: {e.evalue}\n"
                  f"[relam] executed copy with the traceback: {target}\n"
                  f"[relam] fix it, then rerun (finished stages are skipped): "
                  f"./run_all.sh --profile {profile}", file=sys.stderr)
            return 1
        print(f"[relam] {nb.name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"[relam] profile {profile}: {len(books)} notebooks in {time.perf_counter() - t_all:.0f} s; "
          f"results in {cfg.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", help="smoke | cpu | paper (configs/<profile>.yaml)")
    ap.add_argument("--results-dir", default=None, help="override results/<profile>")
    ap.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. --only 01 02")
    ap.add_argument("--kernel", default="python3")
    args = ap.parse_args(argv)
    return run(args.profile, args.results_dir, args.only, args.kernel)


if __name__ == "__main__":
    sys.exit(main())
