#!/usr/bin/env bash
# The full seeded study (benchmarks/sat_study.py) in short invocations: one process per seed and eps group
# (eps 0.3, eps 0.4, then the AT sweep), so that no single process runs for hours. Resumable: rerun it and
# every finished step or model is skipped (from results/sat-study alone when runs/ is gone; see sat_study.py).
# Measured on this 2-core machine: 150-270 s per model (grid models ~220 s, sweep ~157 s), ~2.6 h for all 45.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for s in ${SEEDS:-0 1 2}; do
  $PY benchmarks/sat_study.py --threads 2 --first-seed "$s" --seeds 1 --eps 0.3 --sweep-eps
  $PY benchmarks/sat_study.py --threads 2 --first-seed "$s" --seeds 1 --eps 0.4 --sweep-eps
  $PY benchmarks/sat_study.py --threads 2 --first-seed "$s" --seeds 1 --eps 0.3 --methods at --sweep-eps 0.05 0.1 0.2
done
# the tables over every seed, method and eps
$PY benchmarks/sat_study.py --aggregate-only
