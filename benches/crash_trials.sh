#!/usr/bin/env bash
# Runs the broker's crash trials (examples/broker/tests/crash_trials.rs)
# many times: kill -9 under load with confirms and acks, restart, drain,
# check that no confirmed message is lost. Usage:
#   bash benches/crash_trials.sh [TRIALS] [FIRST_SEED]     (default 100, 1)
set -euo pipefail
cd "$(dirname "$0")/.."
AMQP_CRASH_TRIALS="${1:-100}" AMQP_CRASH_SEED="${2:-1}" \
  cargo test --release -q -p amqp-broker --test crash_trials -- --nocapture 2>&1 \
  | grep -E 'crash trials|panicked|lost|test result'
