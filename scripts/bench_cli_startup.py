"""Time from launching ``ovmap map`` to its first integrated frame, for this tree and (optionally) a baseline tree.

Each run is a fresh interpreter that starts a clock, wraps ``VoxelMap.integrate`` to print the elapsed time when the
first frame is integrated and exits there, then runs the real command line in-process:

    ovmap map dataset.preset=test encoder=oracle device=cpu progress=false out_dir=<tmp>

Runs of the two trees are interleaved (so background load hits both alike); the median of ``--repeat`` runs and
the ratio are printed. Example (before/after a change, the baseline being another checkout):

    python scripts/bench_cli_startup.py --baseline /work/main --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SNIPPET = r"""
import os, sys, time
t0 = time.perf_counter()
import ovmap.mapping.voxel_map as vm
orig = vm.VoxelMap.integrate
def first(self, *a, **k):
    out = orig(self, *a, **k)
    mods = sorted(m for m in ("transformers", "rerun", "open3d", "matplotlib", "sklearn") if m in sys.modules)
    print(f"FIRST_FRAME {time.perf_counter() - t0:.3f} {','.join(mods) or '-'}", flush=True)
    os._exit(0)
vm.VoxelMap.integrate = first
from ovmap.cli import entrypoint
entrypoint(sys.argv[1:])
"""


def one_run(tree: Path, out_dir: str) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    args = ["map", "dataset.preset=test", "encoder=oracle", "device=cpu", "progress=false", f"out_dir={out_dir}"]
    proc = subprocess.run([sys.executable, "-c", SNIPPET, *args], capture_output=True, text=True, env=env,
                          cwd=tree, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("FIRST_FRAME "):
            _, seconds, modules = line.split()
            return float(seconds), modules
    raise RuntimeError(f"{tree}: no frame integrated\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout of ovmap to compare with")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tree (median reported)")
    args = parser.parse_args()
    trees = {"this tree": Path(__file__).resolve().parents[1]}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    times: dict[str, list[float]] = {name: [] for name in trees}
    heavy: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for name, tree in trees.items():
                seconds, modules = one_run(tree, tmp)
                times[name].append(seconds)
                heavy[name] = modules
    print(f"{'tree':<10} {'median s':>9} {'min s':>7}  heavy modules imported before the first frame")
    for name in trees:
        print(f"{name:<10} {statistics.median(times[name]):9.2f} {min(times[name]):7.2f}  {heavy[name]}")
    if "baseline" in times:
        ratio = statistics.median(times["baseline"]) / statistics.median(times["this tree"])
        print(f"baseline / this tree = {ratio:.2f}x (time from launch to the first integrated frame)")


if __name__ == "__main__":
    main()
