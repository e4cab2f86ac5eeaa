"""benchmarks/gpu.sh's dry run: every accelerator benchmark's code path, at tiny sizes, on
the CPU, through the same command an accelerator machine runs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.slow  # runs every benchmark at toy size (~25 s); make test-slow runs it
def test_gpu_sh_dry_run_writes_every_benchmark(tmp_path):
  out = tmp_path / "device.json"
  env = {**os.environ, "PYTHON": sys.executable}
  done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--out",
                         str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["dry_run"] and result["device"]["platform"] == "cpu"
  benchmarks = result["benchmarks"]
  assert set(benchmarks) == {"throughput-bandit", "env_stepping"}
  errors = {k: v["error"] for k, v in benchmarks.items() if "error" in v}
  assert not errors, errors
  # The bandit's rows (no loop in its step) carry fractions of the measured peak.
  fractions = result["fraction_of_peak"]["throughput-bandit"]
  assert set(fractions) == {"4"}
  assert fractions["4"]["measured_bandwidth"] > 0


def test_gpu_sh_says_what_to_do_without_distrax_or_wheels(tmp_path):
  fake = tmp_path / "python3"  # a Python whose every `import distrax` fails
  fake.write_text(f"#!/bin/sh\nif [ \"$1\" = -c ]; then exit 1; fi\nexec {sys.executable} \"$@\"\n")
  fake.chmod(0o755)
  checkout = tmp_path / "checkout"
  (checkout / "benchmarks").mkdir(parents=True)
  (checkout / "benchmarks" / "gpu.sh").write_text((ROOT / "benchmarks" / "gpu.sh").read_text())
  done = subprocess.run(["bash", str(checkout / "benchmarks" / "gpu.sh")],
                        env={**os.environ, "PYTHON": str(fake)}, capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == 2 and "make wheels" in done.stderr
