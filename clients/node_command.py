"""``fedcredit node start``: check an institution's node, then run it with the installed fedcredit.

Flower's ``flower-supernode`` only connects; it never opens the institution's data, so a
broken table would surface as a refusal in the middle of a run — and by default it would run
whatever ClientApp the coordinator ships in the run's FAB. This command first does what the
node will do — read the node config, load and validate the table exactly as ``fedcredit data
validate`` does, open the lifetime privacy state in ``state-dir`` (writable, undamaged, not held
by another running node), check the TLS root certificate and the node key, and connect to the
SuperLink once to test its certificate against ``ca.crt`` — and stops with the report (exit 2)
when anything is wrong. Then it runs the node (:mod:`clients.node_supervisor`): Flower's
SuperNode in ``--isolation process`` mode, which executes nothing itself, and the fedcredit
runtime (:mod:`clients.node_runtime`), which executes every ClientApp task with the fedcredit
installed here and refuses runs of any other app (``app-not-allowed``, :mod:`clients.app_release`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

HELP = "check an institution's data, privacy state and SuperLink connection, then run the node"

DESCRIPTION = """\
Start an institution's node: check everything the node needs, then run Flower's SuperNode with
the fedcredit runtime, which executes every message with the fedcredit installed here.

Checks, in order (any failure prints the report and exits 2 without starting anything):
  1. --node-config: the keys the node reads (data-path, state-dir, max-epsilon, ...) in
     Flower's 'key=value key2=value2' syntax (strings in quotes) or a .toml file
  2. the data: read, mapped and validated exactly like 'fedcredit data validate FILE
     --mapping M' (every problem listed with column and row numbers)
  3. the privacy state in state-dir: created if new, otherwise checked (not damaged, not
     locked by another node process, delta not larger than recorded); prints ε spent/left
  4. --root-certificates (PEM certificate) and --key (OpenSSH ECDSA private key, not readable
     by other users); --insecure with --key is refused (node authentication needs TLS)
  5. the SuperLink: one TLS handshake, its certificate verified against --root-certificates
     for the host in --superlink (not signed by the CA, another name, expired, a SuperLink
     without TLS, or TLS for an --insecure node: exit 2 with the fix). With --check a
     SuperLink that does not answer is an error; otherwise the node waits for it.

Then it runs, and supervises, two processes (their lines get a UTC timestamp):
  flower-supernode --isolation process --host 127.0.0.1 --port P ...   (connects, holds tasks;
      started as 'python -m clients.supernode_launcher': Flower's SuperNode, idle poll 0.25 s,
      replies checked every 0.02 s)
  python -m clients.node_runtime ...   (runs each task with the installed fedcredit, warm;
                                        restarted if it dies)
A run whose app (FAB) is not this installed release is refused with 'app-not-allowed'; the
FAB's code is never run. A SuperLink that refuses the node's key ends the node with exit 2
and the fix.

Node config keys (see docs/institution.md):
  data-path (required)   the institution's table (CSV or Parquet)
  state-dir (required)   where the node keeps its lifetime privacy state (back it up)
  max-epsilon            the institution's lifetime ε budget (required unless
                         allow-non-private = true)
  institution-id         name shown to the consortium (default: the file name)
  mapping                column mapping (a shipped name such as uci-taiwan, or a path)
  schema                 consortium schema (default consumer-credit-v1)
  delta                  δ of the guarantee (default: largest power of ten ≤ 1/(10·rows))
  release-eval           noised (default) | off: what evaluation results leave
  allow-non-private      false (default): refuse runs with dp = false
  allowed-fab-hashes     optional: SHA-256 of the only FAB files accepted, comma-separated
  split-seed, holdout-fraction, accountant (rdp | prv)

--check only runs the checks and prints the two commands. Arguments after '--' are passed to
flower-supernode unchanged (e.g. -- --max-retries 10).

Exit codes: 0 stopped by SIGTERM/SIGINT (or --check passed); 2 a mistake to fix (the message
says which: data, config, key, certificate, TLS mismatch, key not registered); otherwise the
SuperNode's own exit status.

Example:
  fedcredit node start --superlink superlink.consortium.example:8000 \\
      --root-certificates ca.crt --key keys/regional-bank-1 --port 9094 \\
      --node-config "data-path='/data/loans.csv' mapping='uci-taiwan' \\
                     state-dir='/var/lib/fedcredit' max-epsilon=8.0 institution-id='regional-bank-1'"
"""

WAIT_REPORT_S = 10.0  # while the SuperLink does not answer, say so this often

PATH_KEYS = ("data-path", "state-dir")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT",
                        help="the consortium SuperLink's address (its one HTTPS port, usually 8000)")
    parser.add_argument("--root-certificates", metavar="CA", default=None,
                        help="the consortium CA certificate (ca.crt) that signed the SuperLink's certificate")
    parser.add_argument("--key", metavar="KEY", default=None,
                        help="this node's private key from 'fedcredit keys' (its .pub must be registered)")
    parser.add_argument("--node-config", required=True, metavar="'k=v ...'",
                        help="the node config: 'data-path=\"...\" state-dir=\"...\" max-epsilon=8.0 ...' or a .toml file")
    parser.add_argument("--port", type=int, default=9094, metavar="P",
                        help="local port of the SuperNode's ClientApp API (distinct per node on one host)")
    parser.add_argument("--insecure", action="store_true",
                        help="connect without TLS (tests on one machine only; never across a network)")
    parser.add_argument("--check", action="store_true",
                        help="run the checks and print the flower-supernode command without starting it")
    parser.add_argument("supernode_args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                        help="extra flower-supernode arguments after '--'")


def parse_node_config(text: str) -> dict:
    """The node config as Flower's SuperNode parses it (``k=v`` pairs in TOML syntax, or a .toml)."""
    from configs.errors import UserError

    try:
        from flwr.common.config import parse_config_args

        if text.strip().endswith(".toml") and not Path(text.strip()).expanduser().is_file():
            raise UserError(f"--node-config: file {text.strip()} not found")
        cfg = parse_config_args([text.strip()])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--node-config: cannot parse {text!r} ({getattr(exc, 'message', exc)}); write "
                        "key=value pairs separated by spaces, strings and paths in quotes, e.g. "
                        "\"data-path='/data/loans.csv' state-dir='/var/lib/fedcredit' max-epsilon=8.0\"") from None
    if not cfg:
        raise UserError(f"--node-config: no key=value pairs in {text!r}; e.g. "
                        "\"data-path='/data/loans.csv' state-dir='/var/lib/fedcredit' max-epsilon=8.0\"")
    known = ("data-path", "state-dir", "max-epsilon", "institution-id", "mapping", "schema", "delta", "release-eval",
             "allow-non-private", "split-seed", "holdout-fraction", "accountant", "allowed-fab-hashes")
    unknown = [k for k in cfg if k not in known]
    if unknown:
        import difflib

        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        print(f"warning: --node-config: key(s) {', '.join(hints)} not known to this version of the node "
              f"(known: {', '.join(known)}); they are passed on but probably ignored", file=sys.stderr)
    return cfg


def absolute_paths(cfg: dict) -> dict:
    """Node config with data-path, state-dir and a mapping given as a path made absolute."""
    out = dict(cfg)
    for key in PATH_KEYS:
        if key in out and isinstance(out[key], str) and out[key]:
            out[key] = str(Path(out[key]).expanduser().resolve())
    m = out.get("mapping")
    if isinstance(m, str) and m and (os.sep in m or m.endswith(".toml")) and Path(m).expanduser().exists():
        out["mapping"] = str(Path(m).expanduser().resolve())
    return out


def format_node_config(cfg: dict) -> str:
    """``k=v`` pairs that Flower parses back to exactly ``cfg``."""
    from configs.errors import UserError

    parts = []
    for k, v in cfg.items():
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k}={v!r}")
        else:
            s = str(v)
            if "'" not in s:
                parts.append(f"{k}='{s}'")
            elif '"' not in s and "\\" not in s:
                parts.append(f'{k}="{s}"')
            else:
                raise UserError(f"--node-config: the value of '{k}' contains both quote characters; rename the path")
    return " ".join(parts)


def check_node(cfg: dict, out=print) -> dict:
    """Checks 2 and 3; returns a summary (institution, rows, ε spent / budget)."""
    from clients import node as N
    from configs.errors import UserError

    policy = N.deployment_policy(cfg)  # 'data-path' and 'state-dir' are required
    if not Path(policy.source).is_file():
        raise UserError(f"--node-config: data-path {policy.source} does not exist or is not a file")
    data = N.load_node_data(policy)  # DataValidationError: the same report as `fedcredit data validate`
    rows = len(data.split.train) + len(data.split.holdout)
    out(f"data OK: {policy.source}: {rows} rows ({data.split.n_train} for training, "
        f"{len(data.split.holdout)} holdout), schema {data.schema.key}")
    summary = {"institution_id": policy.institution_id, "rows": rows, "data_path": policy.source,
               "state_dir": str(policy.state_dir)}
    state_dir = policy.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"state-dir {state_dir}: cannot create it ({exc.strerror or exc}); give a writable "
                        "directory (it holds the node's lifetime privacy spend — back it up)") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise UserError(f"state-dir {state_dir}: not writable by this user; the node records every privacy "
                        "spend there before it releases anything")
    if policy.max_epsilon is None:
        if not policy.allow_non_private:
            raise UserError("--node-config: 'max-epsilon' is required — the institution's lifetime privacy budget "
                            "(e.g. max-epsilon=8.0); without it the node refuses every DP release. Only for "
                            "non-private test runs: allow-non-private=true")
        out("warning: no max-epsilon: this node only takes part in runs without DP (allow-non-private = true)")
        return summary
    from clients.node_privacy import open_ledger

    with open_ledger(policy, data) as ledger:
        spent, budget = (ledger.spent() if ledger.delta is not None else 0.0), ledger.max_epsilon
        summary.update({"epsilon_spent": spent, "max_epsilon": budget, "delta": ledger.delta})
        delta = f"δ = {ledger.delta:g}" if ledger.delta is not None else "δ set at the first release"
        out(f"privacy state OK: {state_dir}: ε spent {spent:.4f} of {budget:g} ({delta}), "
            f"{max(0.0, budget - spent):.4f} left")
        if spent >= budget:
            out("warning: the budget is used up; the node will refuse every release")
    return summary


def check_tls_and_key(root_certificates: str | None, key: str | None, insecure: bool, out=print) -> None:
    from configs.errors import UserError

    if insecure:
        if root_certificates:
            raise UserError("--insecure and --root-certificates exclude each other")
        if key:
            raise UserError("--insecure with --key: SuperNode authentication needs TLS (Flower would stop with "
                            "exit code 303). Drop --insecure and give --root-certificates ca.crt, or — for a test "
                            "SuperLink without --enable-supernode-auth on this machine only — drop --key")
        out("warning: --insecure: no TLS — the SuperLink's identity is not checked and traffic is readable")
    else:
        if not root_certificates:
            raise UserError("--root-certificates CA is required: the consortium CA certificate (ca.crt) the operator "
                            "gave you; --insecure only for tests on one machine")
        path = Path(root_certificates).expanduser()
        if not path.is_file():
            raise UserError(f"--root-certificates {path}: no such file")
        from cryptography import x509

        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except ValueError:
            raise UserError(f"--root-certificates {path}: not a PEM certificate (expected the operator's ca.crt, "
                            "'-----BEGIN CERTIFICATE-----')") from None
        out(f"root certificate OK: {certs[0].subject.rfc4514_string()}")
    if key is None:
        out("warning: no --key: the SuperLink must run without --enable-supernode-auth to admit this node")
        return
    kpath = Path(key).expanduser()
    if not kpath.is_file():
        raise UserError(f"--key {kpath}: no such file (create it with 'fedcredit keys --out DIR --name ID')")
    head = kpath.read_bytes()[:64]
    if head.startswith((b"ecdsa-sha2-", b"ssh-")):
        raise UserError(f"--key {kpath}: this is a public key; give the private key (the file without .pub, "
                        "an OpenSSH private key)")
    mode = stat.S_IMODE(kpath.stat().st_mode)
    if mode & 0o077:
        raise UserError(f"--key {kpath}: permissions {mode:04o} let other users read the private key; "
                        f"chmod 600 {kpath}")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        k = serialization.load_ssh_private_key(kpath.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        hint = " (is this the .pub file? give the private key)" if kpath.suffix == ".pub" else ""
        raise UserError(f"--key {kpath}: not an unencrypted OpenSSH private key{hint} ({exc}); create one with "
                        "'fedcredit keys'") from None
    if not isinstance(k, ec.EllipticCurvePrivateKey) or k.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise UserError(f"--key {kpath}: Flower's node authentication needs an ECDSA key on a NIST curve; "
                        "create one with 'fedcredit keys'")
    out(f"node key OK: {kpath}")


def supernode_command(args: argparse.Namespace, cfg: dict, secret_file: Path) -> list[str]:
    """``flower-supernode`` in process isolation: it runs no app; tasks wait for the runtime on
    127.0.0.1:PORT, which only a holder of ``secret_file`` may claim them from. Started through
    :mod:`clients.supernode_launcher` (Flower's own entry point, its waits shortened)."""
    cmd = [sys.executable, "-m", "clients.supernode_launcher", "--superlink", args.superlink]
    if args.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(Path(args.root_certificates).expanduser().resolve())]
    if args.key:
        cmd += ["--auth-supernode-private-key", str(Path(args.key).expanduser().resolve())]
    cmd += ["--node-config", format_node_config(cfg), "--isolation", "process", "--host", "127.0.0.1",
            "--port", str(args.port), "--superexec-auth-secret-file", str(secret_file)]
    extra = list(args.supernode_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return cmd + extra


def runtime_command(args: argparse.Namespace, cfg: dict, secret_file: Path) -> list[str]:
    """The fedcredit runtime that executes the SuperNode's tasks (:mod:`clients.node_runtime`)."""
    return [sys.executable, "-m", "clients.node_runtime", "--runtime-api", f"127.0.0.1:{args.port}",
            "--node-config", format_node_config(cfg), "--superexec-auth-secret-file", str(secret_file)]


def check_superlink(args: argparse.Namespace, out=print, wait: bool = False) -> None:
    """Check 5: the SuperLink answers and its TLS matches (:mod:`clients.superlink_probe`).
    ``wait``: a SuperLink that does not answer yet is waited for (a node may start first)."""
    from clients.superlink_probe import probe_superlink
    from configs.errors import UserError

    reported = 0.0
    while True:
        probe = probe_superlink(args.superlink, args.root_certificates, args.insecure)
        if probe.reachable or not wait:
            break
        if time.monotonic() - reported >= WAIT_REPORT_S:
            out(f"waiting for the SuperLink: {probe.problem}")
            reported = time.monotonic()
        time.sleep(1.0)
    if not probe.reachable:
        raise UserError(f"--superlink {args.superlink}: {probe.problem}; check the address and that the "
                        "SuperLink is running (and reachable from here through firewalls)")
    if probe.problem:
        raise UserError(f"--superlink {args.superlink}: {probe.problem}")
    out(f"SuperLink OK: {args.superlink}, certificate {probe.certificate}")


def _secret_file() -> Path:
    """A fresh random secret that the SuperNode and the runtime share (0600, in a 0700 directory)."""
    folder = Path(tempfile.mkdtemp(prefix="fedcredit-node-"))
    path = folder / "superexec.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    return path


def run(args: argparse.Namespace) -> int:
    import shlex

    from configs.errors import UserError

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: must be between 1 and 65535")
    if ":" not in args.superlink or "://" in args.superlink:
        raise UserError(f"--superlink {args.superlink!r}: give HOST:PORT without a scheme, e.g. "
                        "superlink.consortium.example:8000")
    cfg = absolute_paths(parse_node_config(args.node_config))
    from clients.app_release import parse_allowed_hashes

    parse_allowed_hashes(cfg.get("allowed-fab-hashes"))
    check_node(cfg)
    check_tls_and_key(args.root_certificates, args.key, args.insecure)
    check_superlink(args, wait=not args.check)
    secret = _secret_file()
    try:
        supernode, runtime = supernode_command(args, cfg, secret), runtime_command(args, cfg, secret)
        if args.check:
            print("checks passed; would run: " + shlex.join(supernode) + "\n  and: " + shlex.join(runtime), flush=True)
            return 0
        print("starting: " + shlex.join(supernode) + "\n  and: " + shlex.join(runtime), flush=True)
        code = supervise(args, supernode, runtime)
    finally:
        shutil.rmtree(secret.parent, ignore_errors=True)
    # the node has stopped and its secret is gone; skip the interpreter's slow exit with torch
    # loaded by the checks (seconds; tens of seconds on a loaded machine) so a service manager's
    # stop is prompt
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def supervise(args: argparse.Namespace, supernode: list[str], runtime: list[str]) -> int:
    from clients.node_supervisor import Child, NodeSupervisor, runtime_environment

    env = dict(os.environ)  # in process isolation the SuperNode starts no Flower tool of its own
    sup = NodeSupervisor(Child("supernode", supernode, env), Child("runtime", runtime, runtime_environment(env)),
                         args.port, args.key)
    return sup.run()
