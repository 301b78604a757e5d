#!/usr/bin/env bash
# Starts both services and the console on SQLite files under ./var/ with development tokens;
# Ctrl-C stops all three.
set -euo pipefail
python=${PYTHON:-.venv/bin/python}
"$python" -m service_common.dev_tokens var
export SUBSCRIPTIONS_AUTH_TOKENS_FILE=var/tokens.json
export DISPATCHER_AUTH_TOKENS_FILE=var/tokens.json
export DISPATCHER_SUBSCRIPTIONS_TOKEN_FILE=var/platform-token
# Local demos deliver to receivers on this machine, which the SSRF guard refuses otherwise.
export DISPATCHER_ALLOWED_TARGET_NETWORKS=${DISPATCHER_ALLOWED_TARGET_NETWORKS:-127.0.0.0/8}
# Logs for a terminal; services elsewhere log JSON lines by default.
export SUBSCRIPTIONS_LOG_FORMAT=${SUBSCRIPTIONS_LOG_FORMAT:-text}
export DISPATCHER_LOG_FORMAT=${DISPATCHER_LOG_FORMAT:-text}
export CONSOLE_LOG_FORMAT=${CONSOLE_LOG_FORMAT:-text}
# Sign-ins survive a restart of the console.
export CONSOLE_SESSION_KEY_FILE=${CONSOLE_SESSION_KEY_FILE:-var/console-session-key}
"$python" -m subscription_service &
subscriptions=$!
"$python" -m dispatcher_service &
dispatcher=$!
"$python" -m console &
console=$!
trap 'kill -TERM $subscriptions $dispatcher $console 2>/dev/null; wait' INT TERM
echo "subscription service: 127.0.0.1:50051   dispatcher: 127.0.0.1:50052, http://127.0.0.1:8080"
echo "console: http://127.0.0.1:8081 (sign in with the development token in var/dev-token)"
echo "metrics: http://127.0.0.1:9101/metrics, http://127.0.0.1:9102/metrics   (Ctrl-C stops all)"
wait -n $subscriptions $dispatcher $console
kill -TERM $subscriptions $dispatcher $console 2>/dev/null || true
wait
