#!/usr/bin/env bash
# Starts the walk-through over: deletes the SQLite databases `make run` keeps under ./var/
# (subscriptions, events, deliveries). The tokens and signing keys stay, so an exported
# WEBHOOKS_TOKEN_FILE and the keys a receiver fetched remain valid. Stops nothing: it refuses
# while the services run, since they would go on writing to the files it deleted.
set -euo pipefail
python=${PYTHON:-.venv/bin/python}
if ! "$python" - <<'PY'
import os, sys
from service_common.ports import AddressInUse, check_free
try:
    check_free({
        "SUBSCRIPTIONS_GRPC_ADDR": os.environ.get("SUBSCRIPTIONS_GRPC_ADDR", "127.0.0.1:50051"),
        "DISPATCHER_GRPC_ADDR": os.environ.get("DISPATCHER_GRPC_ADDR", "127.0.0.1:50052"),
    })
except AddressInUse as taken:
    sys.exit(f"{taken.addr} is in use: stop `make run` (Ctrl-C) first, then `make reset` again")
PY
then
    exit 1
fi
rm -f var/subscriptions.db var/subscriptions.db-wal var/subscriptions.db-shm \
      var/dispatcher.db var/dispatcher.db-wal var/dispatcher.db-shm
echo "removed the subscriptions, events and deliveries under var/ (tokens and signing keys kept)"
