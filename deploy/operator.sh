#!/usr/bin/env bash
# Operator: certificates, SuperLink (TLS + node authentication + persistent database), CLI connection,
# node registration, run. A template of docs/operator.md — set the variables, run one step at a time:
#   deploy/operator.sh certs | superlink | connection | register KEY.pub... | run [RUN_CONFIG] | status
set -euo pipefail

HOSTS=${HOSTS:-superlink.consortium.example,localhost,127.0.0.1}  # names nodes and the CLI use (certificate SANs)
ADDRESS=${ADDRESS:-127.0.0.1:8001}                    # what the CLI connects to (on this host; the SuperLink's loopback port)
PORT=${PORT:-8001}                                    # loopback only: nginx (deploy/superlink-gate.nginx.conf) serves :8000 to nodes
BASE=${BASE:-/var/lib/fedcredit}                      # certs, SuperLink state, runs
APP=${APP:-$(cd "$(dirname "$0")/.." && pwd)}          # this repository (the Flower app)
CONNECTION=${CONNECTION:-consortium}

export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0

case "${1:-}" in
  certs)
    fedcredit certs --out "$BASE/certs" --hosts "$HOSTS"
    echo "send $BASE/certs/ca.crt (and its fingerprint, by phone) to every institution; move ca.key offline" ;;
  superlink)
    mkdir -p "$BASE/superlink"
    FLWR_HOME="$BASE/superlink" exec flower-superlink \
      --ssl-ca-certfile "$BASE/certs/ca.crt" --ssl-certfile "$BASE/certs/server.crt" \
      --ssl-keyfile "$BASE/certs/server.key" --enable-supernode-auth \
      --database "$BASE/superlink/state.db" --host 127.0.0.1 --port "$PORT" ;;
  connection)   # the CLI's connection, in $FLWR_HOME/config.toml of this machine
    home=${FLWR_HOME:-$HOME/.flwr}; mkdir -p "$home"
    if [ -e "$home/config.toml" ]; then echo "$home/config.toml exists: add [superlink.$CONNECTION] by hand" >&2; exit 2; fi
    printf '[superlink]\ndefault = "%s"\n\n[superlink.%s]\naddress = "%s"\nroot-certificates = "%s"\n' \
      "$CONNECTION" "$CONNECTION" "$ADDRESS" "$BASE/certs/ca.crt" > "$home/config.toml"
    echo "wrote $home/config.toml" ;;
  register)     # deploy/operator.sh register regional-bank-1.pub national-bank-1.pub ...
    shift
    for key in "$@"; do
      ssh-keygen -lf "$key"   # compare with the fingerprint the institution told you
      flwr supernode register "$key" "$CONNECTION"
    done
    flwr supernode ls "$CONNECTION" ;;
  run)          # deploy/operator.sh run "num-server-rounds=20 min-available-nodes=5 ..."
    cd "$APP"
    # without RUN_CONFIG: the deployment defaults of docs/operator.md §7 (evaluate every 5th round, 120 s a round)
    flwr run . "$CONNECTION" --stream --run-config \
      "${2:-evaluate-every=5 round-timeout=120.0 run-dir='$BASE/runs/$(date +%Y%m%d-%H%M%S)'}"
    flwr ls "$CONNECTION" --limit 1 ;;
  status)
    flwr ls "$CONNECTION" ;;
  *)
    sed -n '2,4p' "$0"; exit 2 ;;
esac
