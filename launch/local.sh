#!/usr/bin/env bash
# Runs a job on this machine.
#   launch/local.sh configs/generate.py [--workdir=DIR] [--config.key=value ...]
# Set DEVICES=8 to fake 8 CPU devices (for sharding experiments on one CPU).
set -euo pipefail
config="${1:?usage: launch/local.sh CONFIG [FLAGS...]}"
shift
if [[ -n "${DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}"
fi
exec python -m draftopd_jax.main --config="$config" "$@"
