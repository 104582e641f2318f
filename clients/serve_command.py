"""``fedcredit serve``: the institution's online decision service (HTTP, with a signed decision trail)."""

from __future__ import annotations

import argparse

from fedcredit.arguments import number

HELP = "serve instant credit decisions over HTTP, each recorded in a signed decision trail"
DESCRIPTION = """\
Answer credit applications as they arrive: an HTTP service (uvicorn + Starlette) at the
institution that scores one application (or a batch) with a model package and records every
decision in a tamper-evident trail before it answers.

  POST /v1/decisions                  one application, a JSON object in your own field names
                                      (--mapping applies) → decision_id, pd, score, decision
                                      (approve when pd < cut-off PD), reasons, model sha256
  POST /v1/decisions/batch            {"applications": [...]} for back-office use (all or none)
  GET  /v1/decisions/ID               the decision as recorded, with its overrides
  POST /v1/decisions/ID/override      {"decision": "approve"|"decline", "reason": …, "by": …}
  GET  /v1/decisions/ID/notice        the adverse-action notice of a declined application
  GET  /v1/model, GET /healthz        model and policy; liveness (503 when it cannot record)

Applications are validated exactly as `fedcredit data validate` does (same rules, same wording;
the label may be absent): an invalid one is answered 422 with each problem's field and message.
The model package is verified (sha256 of every file) before the service starts.

The decision trail, --decisions DIR: DIR/decisions.jsonl, a hash chain signed with Ed25519
(`fedcredit decisions verify DIR`, `fedcredit decisions show DIR ID`). A decision is answered only
after its entry is fsynced; applications that arrive together share one fsync (group commit).
Give --signing-key (e.g. from `fedcredit ledger keygen`) kept outside DIR; without it a key is
generated into DIR. --store-application hash keeps only each application's sha256.

Bind to loopback (the default) and put a TLS reverse proxy in front (docs/institution.md).
With --json, one line {"ok", "url", "port", "pid", "model", "trail"} is printed on stdout as soon
as the port is bound (--port 0 picks a free one), and a summary {"ok", "url", "decisions",
"groups", "trail"} as the last line when the service stops. Stop with SIGTERM or Ctrl-C: queued applications are answered, a service-stop
entry is written, and it exits 0.
Exit codes: 0 stopped; 1 it could not start serving; 2 a user mistake (damaged package, bad mapping, broken trail, port in use).
"""
JSON = "the address once listening, and a summary when stopped"  # (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from clients.decision_desk import DEFAULT_MAX_GROUP, DEFAULT_MAX_QUEUE
    from clients.decision_engine import DEFAULT_EXPLAIN
    from clients.decision_http import DEFAULT_MAX_BATCH_BODY, DEFAULT_MAX_BATCH_ITEMS, DEFAULT_MAX_BODY

    p.add_argument("--model", required=True, metavar="DIR", help="model package directory (RUN_DIR/model)")
    p.add_argument("--mapping", help="the institution's column mapping (name or path)")
    p.add_argument("--decisions", metavar="DIR", help="directory of the decision trail (created if needed); "
                                                      "required unless --no-trail")
    p.add_argument("--signing-key", metavar="FILE", help="Ed25519 private key (PEM) that signs the trail; "
                                                         "default: DIR/decisions-key.pem, generated once")
    p.add_argument("--store-application", choices=("full", "hash"), default="full",
                   help="keep each application in the trail as received, or only its sha256")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=number(int, minimum=0, maximum=65535), default=8080,
                   help="TCP port (0: any free port, printed at start)")
    p.add_argument("--cutoff-pd", type=number(float, minimum=0, maximum=1, open_minimum=True, open_maximum=True),
                   help="approve when PD is below this (default: the package's)")
    p.add_argument("--explain", type=number(int, minimum=0), default=DEFAULT_EXPLAIN, metavar="K",
                   help="adverse-action reasons per decision")
    p.add_argument("--institution", help="the institution's name, printed on adverse-action notices")
    p.add_argument("--contact", help="how applicants reach you, printed on notices")
    p.add_argument("--max-body-bytes", type=number(int, minimum=1024), default=DEFAULT_MAX_BODY,
                   help="largest body of one application")
    p.add_argument("--max-batch-bytes", type=number(int, minimum=1024), default=DEFAULT_MAX_BATCH_BODY,
                   help="largest body of a batch")
    p.add_argument("--max-batch", type=number(int, minimum=1), default=DEFAULT_MAX_BATCH_ITEMS,
                   help="most applications in a batch")
    p.add_argument("--max-group", type=number(int, minimum=1), default=DEFAULT_MAX_GROUP,
                   help="most applications decided (and fsynced) together")
    p.add_argument("--max-waiting", type=number(int, minimum=1), default=DEFAULT_MAX_QUEUE,
                   help="applications waiting before new ones are answered 503")
    p.add_argument("--max-connections", type=number(int, minimum=1), default=1000,
                   help="open connections before new ones are answered 503")
    p.add_argument("--no-trail", action="store_true",
                   help="record nothing (for benchmarks only: decisions are then untraceable)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (info logs every request)")


def bind_socket(host: str, port: int):
    """A listening TCP socket on ``host:port`` (port 0: any free one); a port in use is a user mistake."""
    import socket

    from configs.errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or "
                        "--host, or stop what uses it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace):
    import os
    import signal
    import sys

    import uvicorn

    from clients.decision_desk import DecisionDesk
    from clients.decision_engine import DecisionModel
    from clients.decision_http import Limits, build_app
    from clients.decision_log import DecisionLog
    from clients.score_command import check_model_dir
    from configs.errors import UserError
    from fedcredit.json_values import print_json
    from fedcredit.outcome import Outcome
    from fedcredit.path_checks import check_output_dir

    if not args.decisions and not args.no_trail:
        raise UserError("--decisions DIR is required: every decision is recorded there (--no-trail only for "
                        "benchmarks)")
    if args.decisions and args.no_trail:
        raise UserError("--decisions and --no-trail contradict each other; give one")
    if args.decisions:
        check_output_dir(args.decisions, "--decisions")
    check_model_dir(args.model)
    model = DecisionModel(args.model, args.mapping, args.cutoff_pd, args.explain)
    sock = bind_socket(args.host, args.port)
    trail = DecisionLog.open(args.decisions, args.signing_key) if args.decisions else None
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if trail is not None:
        trail.append("service-start", dict(model.settings(), url=url, store_application=args.store_application))
    desk = DecisionDesk(model, trail, args.store_application == "full", args.max_group, args.max_waiting)
    app = build_app(desk, Limits(args.max_body_bytes, args.max_batch_bytes, args.max_batch),
                    args.institution or "", args.contact or "")
    ready = {"ok": True, "url": url, "port": port, "pid": os.getpid(), "model": model.identity,
             "trail": None if trail is None else {"dir": str(trail.path.parent), "head": trail.head,
                                                  "key_id": trail.key_id, "entries": trail.next_index}}
    print(f"serving decisions on {url} (model {model.package_sha256[:16]}…, "
          + (f"trail {trail.path}, head {trail.head[:16]}…)" if trail else "NO decision trail)"), file=sys.stderr)
    if args.json:
        print_json(ready)  # the address first: with --port 0 the caller learns the port here
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level in ("info", "debug"),
                            lifespan="on", timeout_keep_alive=30, timeout_graceful_shutdown=30,
                            limit_concurrency=args.max_connections,
                            server_header=False)
    server = uvicorn.Server(config)
    # uvicorn stops gracefully on SIGTERM / SIGINT, then raises the signal again with the handlers
    # found at start: ignoring them there makes an orderly stop exit 0 instead of dying of the signal
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = {"ok": bool(server.started), "url": url, "decisions": desk.decided, "groups": desk.groups,
               "trail": None if trail is None else {"dir": str(trail.path.parent), "head": trail.head,
                                                    "entries": trail.next_index},
               "problem": desk.failure}
    return Outcome(summary, 0 if server.started else 1)


def _stopped(signum, frame) -> None:
    """The signal uvicorn re-raises after its graceful shutdown: the stop it asked for is done."""
