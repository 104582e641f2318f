#!/usr/bin/env bash
# Institution: key pair, data check, node start. A template of docs/institution.md — set the variables:
#   deploy/institution.sh keys | check | start | status
set -euo pipefail

NAME=${NAME:-regional-bank-1}                          # institution id (key name, shown to the consortium)
SUPERLINK=${SUPERLINK:-superlink.consortium.example:8000}
CA=${CA:-/etc/fedcredit/ca.crt}                        # from the operator; check its fingerprint
DATA=${DATA:-/data/loans.csv}
MAPPING=${MAPPING:-}                                   # e.g. /etc/fedcredit/my-bank.toml or uci-taiwan
STATE=${STATE:-/var/lib/fedcredit/state}               # lifetime privacy state: back it up
MAX_EPSILON=${MAX_EPSILON:-8.0}                        # your lifetime budget
KEYS=${KEYS:-/etc/fedcredit/keys}
PORT=${PORT:-9094}                                     # local only; distinct per node on one host

node_config="data-path='$DATA' state-dir='$STATE' max-epsilon=$MAX_EPSILON institution-id='$NAME'"
[ -n "$MAPPING" ] && node_config="$node_config mapping='$MAPPING'"

case "${1:-}" in
  keys)   fedcredit keys --out "$KEYS" --name "$NAME"
          echo "send $KEYS/$NAME.pub to the operator; tell the fingerprint by phone" ;;
  check)  fedcredit data validate "$DATA" ${MAPPING:+--mapping "$MAPPING"}
          fedcredit node start --superlink "$SUPERLINK" --root-certificates "$CA" --key "$KEYS/$NAME" \
            --port "$PORT" --node-config "$node_config" --check ;;
  start)  FLWR_HOME=${FLWR_HOME:-$STATE/flwr} exec fedcredit node start --superlink "$SUPERLINK" \
            --root-certificates "$CA" --key "$KEYS/$NAME" --port "$PORT" --node-config "$node_config" ;;
  status) fedcredit privacy status --state-dir "$STATE" ;;
  *)      sed -n '2,3p' "$0"; exit 2 ;;
esac
