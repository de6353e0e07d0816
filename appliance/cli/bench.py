"""`appliance bench NAME`: benchmark programs that print numbers.

Each benchmark lives in appliance.bench.<name> and exposes register(subparsers). Benchmarks never
assert; they measure and print, and the numbers go into release notes and issue reports.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ["wakeup", "swap", "api", "serve", "sandbox", "images", "resume", "ops", "mcp"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its numbers")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"appliance.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"appliance.bench.{name}":
                continue
            raise
        module.register(bsub)
