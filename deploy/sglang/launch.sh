#!/bin/sh
# asyncwebrl-sglang: start SGLang the way asyncwebrl expects its inference endpoints to be.
#
# SGLang needs no asyncwebrl code to join the system: the gateway and the trainer only speak SGLang's
# native HTTP API to it, and SGLang does not heartbeat into the endpoint registry itself. weightsync
# registers it on its behalf (--discovery static --static-endpoints job=id@http://sglang:30000 in compose,
# --discovery kubernetes by pod label in a cluster), probing /health and /model_info. So this wrapper only
# fixes the flags that registration, weight sync and monitoring rely on:
#
#   --port 30000 --host 0.0.0.0     where weightsync's static entry / --k8s-port looks for it
#   --enable-metrics                /metrics for Prometheus (unauthenticated, like /health)
#   --weight-version               the version the loaded weights are (default 0: the job's starting
#                                   checkpoint), so a fresh server is not routed as if it were current;
#                                   a restarted one is caught up by the next publish (and by weightsync's
#                                   reconciler where trainers publish through weightsync)
#   --api-key / --admin-api-key     both from SGLANG_API_KEY (compose: ASYNCWEBRL_ENGINE_API_KEY, the key
#                                   the gateway, trainer and weightsync send): with an admin key set SGLang
#                                   accepts only it on admin routes, so one key serves the gateway's
#                                   /generate and the weight updates alike
#
# Environment: SGLANG_MODEL_PATH (required: a local checkpoint directory; weights are never downloaded),
# SGLANG_API_KEY (required unless SGLANG_ALLOW_NO_API_KEY=1), SGLANG_PORT (30000),
# SGLANG_WEIGHT_VERSION (0). Every argument is passed on to sglang.launch_server (--tp-size,
# --mem-fraction-static, ...). The Kubernetes launcher starts `python -m sglang.launch_server` itself and
# does not use this script.
set -eu

: "${SGLANG_MODEL_PATH:?set SGLANG_MODEL_PATH to a local checkpoint directory (config.json, *.safetensors)}"
if [ ! -f "$SGLANG_MODEL_PATH/config.json" ]; then
  echo "asyncwebrl-sglang: no config.json in SGLANG_MODEL_PATH=$SGLANG_MODEL_PATH" >&2
  exit 2
fi

set -- --model-path "$SGLANG_MODEL_PATH" --host 0.0.0.0 --port "${SGLANG_PORT:-30000}" --enable-metrics \
  --weight-version "${SGLANG_WEIGHT_VERSION:-0}" "$@"

if [ -n "${SGLANG_API_KEY:-}" ]; then
  set -- "$@" --api-key "$SGLANG_API_KEY" --admin-api-key "$SGLANG_API_KEY"
elif [ "${SGLANG_ALLOW_NO_API_KEY:-0}" != "1" ]; then
  echo "asyncwebrl-sglang: SGLANG_API_KEY is empty; set it (or SGLANG_ALLOW_NO_API_KEY=1 on a" \
       "loopback-only machine)" >&2
  exit 2
fi

exec python3 -m sglang.launch_server "$@"
