"""Shared benchmark plumbing: timing, the machine and versions, JSON output.

Timings are medians over interleaved rounds (the machines are shared and
noisy); compile time is measured separately with ahead-of-time lowering.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax

RESULTS = pathlib.Path(__file__).parent / "results"
# PRNG implementations a benchmark can be keyed with (`jax.random.key(0, impl=...)`).
KEY_IMPLS = ["threefry2x32", "threefry4x32", "philox2x32", "philox4x32", "rbg", "unsafe_rbg"]


def environment() -> dict:
  """The device, host and package versions a result was measured with."""
  device = jax.devices()[0]
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "distrax", "chex", "numpy", "torch"):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      versions[name] = importlib.metadata.version(name)
  return {
      "device": {"platform": device.platform, "kind": device.device_kind,
                 "count": jax.device_count()},
      "host": {"machine": platform.machine(), "processor": platform.processor(),
               "cpu_count": os.cpu_count(), "python": platform.python_version()},
      "versions": versions,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def device_tag() -> str:
  device = jax.devices()[0]
  kind = device.device_kind.lower().replace(" ", "-")
  return f"{device.platform}-{kind}" if device.platform != "cpu" else f"cpu-{os.cpu_count()}core"


def block(tree):
  return jax.block_until_ready(tree)


def interleaved_medians(candidates: dict[str, Callable[[], float]], rounds: int) -> dict:
  """Runs every candidate once per round, in turn, and takes medians.

  Each candidate returns its own measurement (seconds per unit of work), so the
  rounds see the same machine load; ratios of medians from one call compare fairly.
  """
  samples: dict[str, list[float]] = {name: [] for name in candidates}
  for _ in range(rounds):
    for name, measure in candidates.items():
      samples[name].append(measure())
  return {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                 "rounds": len(v)} for name, v in samples.items()}


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
  """Seconds per call of `fn` (which must block on its own result)."""
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def python_loop_timer(step, state, key) -> Callable[[int], float]:
  """`measure(calls)`: seconds per call of `step(state, key)` from a Python loop.

  `step` may donate its state, so the state is threaded from one measurement to
  the next (the first call, here, also warms it up).
  """
  holder = {"state": block(step(state, key)[0])}

  def measure(calls: int) -> float:
    s = holder["state"]
    start = time.perf_counter()
    for _ in range(calls):
      s, _ = step(s, key)
    block(s)
    holder["state"] = s
    return (time.perf_counter() - start) / calls

  return measure


def compile_seconds(jitted, *args) -> tuple[float, object]:
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return time.perf_counter() - start, compiled


def write(name: str, payload: dict, out: str | None = None) -> pathlib.Path:
  path = pathlib.Path(out) if out else RESULTS / f"{name}-{device_tag()}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"benchmark": name, **environment(), **payload}, indent=2) + "\n")
  return path


# Vendor datasheet peaks: (memory bytes/s, dense float32 FLOP/s without tensor
# cores), keyed by a substring of `device.device_kind`. First match wins.
SPEC_PEAKS = (
    ("H200", (4.8e12, 67e12)),
    ("H100 PCIe", (2.0e12, 51e12)),
    ("H100", (3.35e12, 67e12)),          # SXM, HBM3
    ("A100-SXM4-80GB", (2.039e12, 19.5e12)),
    ("A100-SXM4-40GB", (1.555e12, 19.5e12)),
    ("A100", (1.935e12, 19.5e12)),       # PCIe 80GB
    ("L4", (0.3e12, 30.3e12)),
    ("TPU v4", (1.2e12, None)),
    ("TPU v5e", (0.819e12, None)),
)


def spec_peaks() -> dict:
  """The datasheet peaks of the first device, where this file knows them."""
  kind = jax.devices()[0].device_kind
  for key, (bandwidth, flops) in SPEC_PEAKS:
    if key in kind:
      return {"bytes_per_s": bandwidth, "fp32_flops_per_s": flops, "matched": key}
  return {"bytes_per_s": None, "fp32_flops_per_s": None, "matched": None}


def measured_bandwidth(size_bytes: int = 1 << 28, rounds: int = 7) -> float:
  """Bytes/s that a jitted elementwise `x * 2` moves on the default device.

  It reads and writes `size_bytes` each, so this is the streaming bandwidth a
  simple XLA program reaches: the practical ceiling for a memory-bound step.
  """
  x = jax.numpy.ones((size_bytes // 4,), jax.numpy.float32)
  double = jax.jit(lambda v: v * 2.0)
  block(double(x))
  seconds = statistics.median(timed(lambda: block(double(x))) for _ in range(rounds))
  return 2 * size_bytes / seconds


def program_cost(compiled) -> dict:
  """FLOPs and bytes accessed of a compiled program from XLA's cost analysis.

  XLA counts the optimised program's operations once each: the body of a
  `lax.scan` or `while_loop` is counted once, not once per iteration, so this
  is exact only for programs without loops (the bandit's one-step rollout).
  """
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {"flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0))}
