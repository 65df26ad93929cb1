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


# run only when named (--only 08): an ablation redoes stages 02-06 under other settings, hours at the cpu profile
OPT_IN = {"08"}


def numbered_notebooks(only: list[str] | None = None) -> list[Path]:
    books = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return [p for p in books if p.name[:2] not in OPT_IN]
    wanted = {o.zfill(2) for o in only}
    unknown = wanted - {p.name[:2] for p in books}
    if unknown:
        raise SystemExit(f"no notebook numbered {sorted(unknown)}; have: {[p.name for p in books]}")
    return [p for p in books if p.name[:2] in wanted]


def parse_params(items: list[str] | None) -> dict:
    """``--param NAME=VALUE`` pairs -> {NAME: VALUE}, each VALUE read as YAML (``iql_tasks=[PickCube]``, ``seeds=[0]``,
    ``name=text``), as papermill's own ``-y`` reads it."""
    import yaml

    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"--param {item!r}: expected NAME=VALUE with NAME a notebook parameter, "
                             f"e.g. --param 'iql_tasks=[PickCube]'")
        if name in ("profile", "results_dir"):
            raise SystemExit(f"--param {name}: set it with --{name.replace('_', '-')} instead")
        out[name] = yaml.safe_load(value)
    return out


def run(profile: str, results_dir: str | None = None, only: list[str] | None = None,
        kernel: str = "python3", params: dict | None = None) -> int:
    """Execute the notebooks; ``params`` are extra papermill parameters given to every notebook run. A name that no
    selected notebook's parameters cell defines is refused (papermill would inject it and nothing would read it)."""
    import papermill as pm

    try:
        cfg = load_config(profile, {"results_dir": results_dir} if results_dir else None)
    except ConfigError as e:
        print(f"[relam] {e}", file=sys.stderr)
        return 2
    # papermill runs the notebooks in notebooks/: a relative results dir (--results-dir or RELAM_RESULTS_DIR) means
    # the caller's, so they get it absolute (before, a relative one put every result under notebooks/results/)
    cfg.results_dir = str(cfg.out.resolve()) if cfg.results_dir else None
    books = numbered_notebooks(only)
    if params:
        known = set().union(*(pm.inspect_notebook(str(nb)) for nb in books))
        unknown = sorted(set(params) - known)
        if unknown:
            print(f"[relam] --param {unknown}: no parameter of that name in {[nb.name for nb in books]}; "
                  f"their parameters: {sorted(known)}", file=sys.stderr)
            return 2
    out_dir = cfg.out / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)  # papermill does not create it
    t_all = time.perf_counter()
    times = []
    for nb in books:
        target = out_dir / nb.name
        print(f"[relam] {profile}: running {nb.name} -> {target}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(target),
                                parameters={"profile": profile, "results_dir": cfg.results_dir or None, **(params or {})},
                                kernel_name=kernel, cwd=str(NOTEBOOK_DIR), progress_bar=False,
                                log_output=True, stdout_file=sys.stdout, stderr_file=sys.stderr)
        except pm.PapermillExecutionError as e:
            print(f"\n[relam] FAILED in {nb.name}, cell {e.cell_index}: {e.ename}: {e.evalue}\n"
                  f"[relam] executed copy with the traceback: {target}\n"
                  f"[relam] fix it, then rerun (finished stages are skipped): "
                  f"./run_all.sh --profile {profile}", file=sys.stderr)
            _summary(cfg, times, time.perf_counter() - t_all, failed=nb.name)
            return 1
        times.append((nb.name, time.perf_counter() - t0))
        print(f"[relam] {nb.name} done in {times[-1][1]:.0f} s", flush=True)
    _summary(cfg, times, time.perf_counter() - t_all)
    return 0


def _summary(cfg, times: list[tuple[str, float]], total: float, failed: str | None = None) -> None:
    """What ran, how long it took, and where the table and figures are."""
    lines = [f"[relam] ===== profile {cfg.profile}: " + (f"FAILED in {failed}" if failed else "finished")
             + f", total {total / 60:.1f} min ====="]
    lines += [f"[relam]   {name:<28} {sec / 60:7.1f} min" for name, sec in times]
    table = cfg.out / "table4.md"
    if table.exists():
        lines.append(f"[relam] Table 4: {table} (also .csv, .tex)")
        lines += ["[relam]   " + row for row in table.read_text().splitlines()[2:] if row.startswith("|")]
    figs = sorted(cfg.figures_dir.glob("*.png")) if cfg.figures_dir.exists() else []
    if figs:
        lines.append(f"[relam] figures ({len(figs)} PNG + PDF): {cfg.figures_dir}")
    lines.append(f"[relam] all results: {cfg.out}; executed notebooks: {cfg.out / 'notebooks'}")
    if not any(name[:2] in OPT_IN for name, _ in times):
        lines.append(f"[relam] opt-in (hours at cpu): ablations ./run_all.sh --profile {cfg.profile} --only 08")
    print("\n".join(lines), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", help="smoke | cpu | paper (configs/<profile>.yaml)")
    ap.add_argument("--results-dir", default=None, help="override results/<profile>")
    ap.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. --only 01 02")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--param", action="append", metavar="NAME=VALUE",
                    help="a notebook parameter, VALUE as YAML (repeatable), e.g. --param 'iql_tasks=[PickCube]'")
    args = ap.parse_args(argv)
    return run(args.profile, args.results_dir, args.only, args.kernel, parse_params(args.param))


if __name__ == "__main__":
    sys.exit(main())
