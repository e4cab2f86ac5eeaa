"""Every benchmark on the devices JAX sees, merged into benchmarks/results/<device>.json.

Sizes follow the device: on a CPU the bandit goes up to 65,536 parallel
episodes and CartPole to 2,048 environments; on an accelerator up to 2^22 and
2^16; with more than one local device, CartPole's scaling over them too
(`scaling.py`). Each benchmark runs in its own process (so one failing does not stop the
rest) and the merged file maps each benchmark's name to its own JSON.

    python benchmarks/run_all.py [--only throughput-bandit,env_stepping]

With `--only`, the other benchmarks' entries already in the device's file stay.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import common
import jax

HERE = pathlib.Path(__file__).parent


def plan(accelerator: bool) -> dict[str, list[str]]:
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
      **({"scaling-cartpole": ["scaling.py", "--num-envs", str(cartpole[-1] // 4)]}
         if jax.local_device_count() > 1 else {}),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", help="comma-separated benchmark names")
  args = parser.parse_args()
  accelerator = jax.default_backend() != "cpu"
  runs = plan(accelerator)
  if args.only:
    runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
  merged = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, command in runs.items():
      out = pathlib.Path(tmp) / f"{name}.json"
      done = subprocess.run([sys.executable, str(HERE / command[0]), *command[1:],
                             "--out", str(out)], capture_output=True, text=True)
      if done.returncode or not out.exists():
        merged[name] = {"error": done.stderr[-2000:]}
        print(f"{name}: FAILED", flush=True)
        continue
      merged[name] = json.loads(out.read_text())
      print(f"{name}: ok", flush=True)
      print(done.stdout[-1500:], flush=True)
  path = common.RESULTS / f"{common.device_tag()}.json"
  if args.only and path.exists():  # keep the benchmarks this call did not run
    merged = {**json.loads(path.read_text()).get("benchmarks", {}), **merged}
  path.write_text(json.dumps({**common.environment(), "benchmarks": merged}, indent=2) + "\n")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
