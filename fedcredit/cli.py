"""The ``fedcredit`` command: one dispatcher over the commands that live in each package.

Each command is a module with ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args) -> int | Outcome`` (:mod:`fedcredit.outcome`). Command modules keep heavy imports
(torch, Flower) inside ``run`` so that ``--help`` stays instant.

``--json``: a module that sets ``JSON`` (the words for what it prints, e.g. ``"the run's
summary"``) gets the option from here, and its ``run`` returns an :class:`Outcome` — the exit
code and the summary. This dispatcher prints the summary as one JSON line, the last line of
standard output (NumPy values and paths allowed, :func:`fedcredit.json_values.json_default`).
No command prints JSON itself.

User mistakes raise :class:`configs.errors.UserError`; they are printed as one message without
a traceback and the command exits with code 2 — and, for a command run with ``--json``, also
as ``{"ok": false, "error": MESSAGE}`` on the last line of standard output, or as the
exception's own ``json_report`` when the command attached one (e.g. a validation report). Any
other exception is a bug and keeps its traceback.

Command modules never import this module (it imports them): the helpers they share live below
it — argparse types in :mod:`fedcredit.arguments`, the JSON line in :mod:`fedcredit.json_values`,
the returned :class:`Outcome` in :mod:`fedcredit.outcome`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from configs.errors import UserError
from fedcredit.json_values import print_json
from fedcredit.outcome import Outcome

# (command path, module). Groups ("data", "privacy", ...) are created from the paths.
COMMANDS: list[tuple[str, str]] = [
    ("data validate", "clients.validate_command"),
    ("data synth", "simulation.synth_command"),
    ("data partition", "simulation.partition_command"),
    ("schema infer", "clients.schema_command"),
    ("simulate", "simulation.simulate_command"),
    ("sweep", "simulation.sweep_command"),
    ("score", "clients.score_command"),
    ("monitor", "clients.monitor_command"),
    ("backtest", "clients.backtest_command"),
    ("compare", "clients.compare_command"),
    ("drift release", "clients.drift_release_command"),
    ("drift view", "server.drift_view_command"),
    ("serve", "clients.serve_command"),
    ("decisions verify", "clients.decisions_verify_command"),
    ("decisions show", "clients.decisions_show_command"),
    ("decisions override", "clients.decisions_override_command"),
    ("decisions notice", "clients.decisions_notice_command"),
    ("report", "server.report_command"),
    ("ledger verify", "server.ledger_command"),
    ("ledger keygen", "server.ledger_keygen_command"),
    ("certs", "server.certs_command"),
    ("keys", "clients.keys_command"),
    ("node start", "clients.node_command"),
    ("nodes register", "server.nodes_register_command"),
    ("nodes list", "server.nodes_list_command"),
    ("privacy plan", "privacy.plan_command"),
    ("privacy status", "privacy.status_command"),
    ("privacy new-population", "privacy.new_population_command"),
    ("privacy audit", "clients.audit_command"),
]

GROUP_HELP = {
    "data": "validate an institution's table; synthesise a consortium; partition one table into institutions",
    "privacy": "plan, inspect and audit differential privacy",
    "schema": "draft a consortium schema from a table (docs/schemas.md explains writing one)",
    "ledger": "verify the signed audit ledger of a run; create the operator's signing key",
    "decisions": "the decision service's trail: verify it, show and reproduce a decision, record an override, "
                 "print an adverse-action notice",
    "drift": "the consortium's view of drift: a member releases DP-noised score-band counts on its own ledger; "
             "the operator aggregates them and sees when to retrain",
    "node": "run an institution's node (checks its data, then starts Flower's SuperNode)",
    "nodes": "operator: register institutions' node keys under their names; list the registered nodes",
}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written; an option's default appended unless it is unset (None / a flag's
    False) or the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command tree; with ``argv``, only the command it names gets its options (the
    others keep their one-line help), so a command does not pay for the others' imports —
    e.g. ``privacy status`` stays well under a second."""
    wanted = [w for w in argv if not w.startswith("-")][:2] if argv else None
    parser = argparse.ArgumentParser(
        prog="fedcredit",
        description=(
            "Federated credit scoring: lenders train one default-prediction model with Flower,\n"
            "each institution protecting its borrowers with differentially private training.\n\n"
            "Run 'fedcredit COMMAND --help' for the details of a command."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"fedcredit {_version()}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        words = path.split()
        if len(words) == 1:
            sub = top.add_parser(words[0], help=module.HELP, description=module.DESCRIPTION,
                                 formatter_class=_Formatter)
        else:
            group, name = words
            if group not in groups:
                gp = top.add_parser(group, help=GROUP_HELP.get(group, ""),
                                    description=GROUP_HELP.get(group, ""), formatter_class=_Formatter)
                groups[group] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                gp.set_defaults(_group_parser=gp)
            sub = groups[group].add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                           formatter_class=_Formatter)
        if wanted is None or words == wanted[:len(words)]:
            module.add_arguments(sub)
            if getattr(module, "JSON", None):
                sub.add_argument("--json", action="store_true",
                                 help=f"print {module.JSON} as JSON, the last line of standard output")
        sub.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fedcredit")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        (getattr(args, "_group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        result = run(args)
    except UserError as exc:
        if getattr(args, "json", False):
            print_json(getattr(exc, "json_report", None) or {"ok": False, "error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if isinstance(result, Outcome):
        if getattr(args, "json", False):
            print_json(result.summary)
        return result.exit_code
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
