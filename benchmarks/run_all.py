"""Every benchmark on the devices JAX sees, merged into benchmarks/results/<device>.json.

Sizes follow the device: on a CPU the bandit goes up to 65,536 parallel
episodes and CartPole to 2,048 environments; on an accelerator up to 2^22 and
2^16; with more than one local device, CartPole's scaling over them too
(`scaling.py`). Each benchmark runs in its own process (so one failing does not stop the
rest) and the merged file maps each benchmark's name to its own JSON.

    python benchmarks/run_all.py [--only throughput-bandit,env_stepping] [--time-limit S]
    python benchmarks/run_all.py --dry-run --out /tmp/dry.json   # tiny sizes, seconds

With `--only`, the other benchmarks' entries already in the device's file stay.
`benchmarks/gpu.sh` is the one command for an accelerator machine (8 minutes).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import common
import jax

HERE = pathlib.Path(__file__).parent


def plan(accelerator: bool, *, dry_run: bool = False) -> dict[str, list[str]]:
  """The benchmarks and their arguments: accelerator or CPU sizes, or tiny ones (`dry_run`)."""
  if dry_run:  # the throughput and stepping code paths, at sizes that take seconds on a CPU
    return {
        "throughput-bandit": ["throughput.py", "--sizes", "4", "--rounds", "1",
                              "--budget", "0.01"],
        "env_stepping": ["env_stepping.py", "--num-envs", "8", "--steps", "10",
                         "--rounds", "1"],
    }
  bandit = [4**i for i in range(12)] if accelerator else [4**i for i in range(9)]
  cartpole = [256, 2048, 16384, 65536] if accelerator else [256, 2048]
  envs = 65536 if accelerator else 4096
  return {
      "throughput-bandit": ["throughput.py", "--sizes", ",".join(map(str, bandit))],
      "throughput-cartpole-value-shared": [
          "throughput.py", "--env", "cartpole", "--rollout-length", "128", "--baseline",
          "value", "--value-head", "shared", "--sizes", ",".join(map(str, cartpole))],
      "env_stepping": ["env_stepping.py", "--num-envs", str(envs)],
      "vs_pytorch_seed": ["vs_pytorch_seed.py"],
      "time_to_solve": ["time_to_solve.py", "--repeats", "1"],
      "estimators": ["estimators.py", "--replicates", "200"],
      **({"sequence_audit": ["sequence_audit.py"]}
         if (HERE / "sequence_audit.py").exists() else {}),
      **({"scaling-cartpole": ["scaling.py", "--num-envs", str(cartpole[-1] // 4)]}
         if jax.local_device_count() > 1 else {}),
  }


def fractions_of_peak(merged: dict) -> dict:
  """Per throughput benchmark and size, the fractions of peak its rows report."""
  table = {}
  for name, result in merged.items():
    for row in (result.get("rows", []) if isinstance(result, dict) else []):
      if isinstance(row, dict) and "fraction_of_peak" in row:
        table.setdefault(name, {})[str(row.get("num_envs"))] = row["fraction_of_peak"]
  return table


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", help="comma-separated benchmark names")
  parser.add_argument("--dry-run", action="store_true",
                      help="tiny sizes (seconds on a CPU): checks that every benchmark runs")
  parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                      help="stop starting benchmarks, and stop the running one, S seconds "
                           "after the start (its entry says so)")
  parser.add_argument("--out", help="the merged JSON (default benchmarks/results/<device>.json)")
  args = parser.parse_args()
  accelerator = jax.default_backend() != "cpu"
  runs = plan(accelerator, dry_run=args.dry_run)
  if args.only:
    runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
  start = time.perf_counter()
  merged = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, command in runs.items():
      left = None if args.time_limit is None else args.time_limit - (time.perf_counter() - start)
      if left is not None and left <= 1:
        merged[name] = {"error": f"not run: --time-limit {args.time_limit:g} s reached"}
        print(f"{name}: SKIPPED (time limit)", flush=True)
        continue
      out = pathlib.Path(tmp) / f"{name}.json"
      began = time.perf_counter()
      try:
        done = subprocess.run([sys.executable, str(HERE / command[0]), *command[1:],
                               "--out", str(out)], capture_output=True, text=True, timeout=left)
      except subprocess.TimeoutExpired:
        merged[name] = {"error": f"stopped at --time-limit {args.time_limit:g} s"}
        print(f"{name}: STOPPED (time limit)", flush=True)
        continue
      if done.returncode or not out.exists():
        merged[name] = {"error": done.stderr[-2000:]}
        print(f"{name}: FAILED", flush=True)
        continue
      merged[name] = json.loads(out.read_text())
      merged[name]["wall_s"] = round(time.perf_counter() - began, 1)
      print(f"{name}: ok ({merged[name]['wall_s']} s)", flush=True)
      print(done.stdout[-1500:], flush=True)
  path = pathlib.Path(args.out) if args.out else common.RESULTS / f"{common.device_tag()}.json"
  if args.only and path.exists():  # keep the benchmarks this call did not run
    merged = {**json.loads(path.read_text()).get("benchmarks", {}), **merged}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({**common.environment(), "dry_run": args.dry_run,
                              "wall_s": round(time.perf_counter() - start, 1),
                              "fraction_of_peak": fractions_of_peak(merged),
                              "benchmarks": merged}, indent=2) + "\n")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
