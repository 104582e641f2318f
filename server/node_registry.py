"""Which node is which institution: names bound to node keys when the operator registers them.

With SuperNode authentication every node proves it holds the private key of a public key the
operator registered on the SuperLink. Registration is where the institution's name is bound to
that key: :func:`register_node` reads the public key ``fedcredit keys`` wrote (one OpenSSH line
whose comment is the institution id), checks the name, and registers the key on the SuperLink
with that name (Flower's Control API ``RegisterNode``, what ``flwr supernode register … --name``
does). The SuperLink stores name, key and node id together in its database and refuses a second
registration of the same key; :func:`register_node` also refuses a second active registration of
the same name. :func:`list_nodes` reads them back (``ListNodes``): node id, institution, status,
key fingerprint — what ``flwr supernode ls`` shows without the name.

The name a node's replies carry (``institution-id`` in its node config) is what the node says;
the registered name is what the operator bound to its key. ``fedcredit nodes list`` shows the
registered one; run records use the reply's.

Both talk to the SuperLink through the Flower CLI's own connection settings (``FLWR_HOME``'s
``config.toml``, a named ``[superlink.<connection>]``) and its Control API client — Flower
internals (``flwr.cli.flower_config``, ``flwr.cli.utils``): flwr is pinned to 1.42.* for them.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

from configs.errors import UserError
from fedcredit.node_keys import check_institution_id, ssh_fingerprint

#: node statuses Flower reports for a registration that is not withdrawn
ACTIVE_STATUSES = ("registered", "online", "offline")


@dataclass(frozen=True)
class RegisteredNode:
    node_id: int
    institution: str
    status: str
    fingerprint: str
    registered_at: str
    last_seen: str

    def to_json(self) -> dict:
        return asdict(self)


def read_public_key(path: str | Path, institution: str | None = None) -> tuple[bytes, str, str]:
    """(PEM bytes as the SuperLink stores them, fingerprint, institution) of a node's public key file.

    The institution is ``institution`` or else the key's comment (``fedcredit keys --name``);
    when both are given they must agree.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{path}: no such public key file (an institution sends NAME.pub from 'fedcredit keys')")
    line = p.read_text(encoding="utf-8", errors="replace").strip()
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, IndexError, UnsupportedAlgorithm):
        hint = " — this is a private key; register the .pub file" if "PRIVATE KEY" in line else ""
        raise UserError(f"{path}: not an OpenSSH public key line ('ecdsa-sha2-nistp384 AAAA… NAME'){hint}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UserError(f"{path}: a {type(key).__name__.lstrip('_')}; SuperNode authentication needs an ECDSA key on "
                        "a NIST curve ('fedcredit keys' makes one)")
    comment = line.split()[2] if len(line.split()) > 2 else ""
    if institution and comment and comment != institution:
        raise UserError(f"{path}: the key is named '{comment}' (its comment) but --institution is '{institution}'; "
                        "register each institution's own key under its own name")
    name = check_institution_id(institution or comment, "--institution" if institution else f"{path}: key comment")
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, ssh_fingerprint(line), name


def _pem_fingerprint(pem: bytes) -> str:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    except (ValueError, TypeError):
        return "?"
    return ssh_fingerprint(line)


@contextlib.contextmanager
def control_client(connection: str | None):
    """The Flower Control API client of the named SuperLink connection (Flower CLI settings);
    Flower's own failures (no such connection, SuperLink unreachable) become :class:`UserError`."""
    import click

    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection

    client = None
    try:
        client = init_http_client_from_connection(read_superlink_connection(connection))
        yield client
    except click.ClickException as exc:
        raise UserError(f"SuperLink connection '{connection or 'default'}': {exc.format_message()}") from None
    except SystemExit as exc:  # Flower's CLI helpers exit on some errors after printing them
        raise UserError(f"SuperLink connection '{connection or 'default'}': the Flower CLI stopped (exit "
                        f"{exc.code}); see its message above") from None
    finally:
        if client is not None:
            client.close()


def _call(method, request, connection: str | None):
    import click

    from flwr.cli.utils import flwr_cli_exc_handler

    try:
        with flwr_cli_exc_handler():
            return method(request=request)
    except click.ClickException as exc:
        raise UserError(f"SuperLink connection '{connection or 'default'}': {exc.format_message()}") from None


def list_nodes(connection: str | None = None, include_unregistered: bool = False) -> list[RegisteredNode]:
    """The nodes registered on the SuperLink of ``connection``, oldest registration first."""
    from flwr.proto.control_pb2 import ListNodesRequest  # pylint: disable=E0611

    with control_client(connection) as client:
        response = _call(client.ListNodes, ListNodesRequest(), connection)
    nodes = [RegisteredNode(node_id=int(n.node_id), institution=n.name if n.HasField("name") else "",
                            status=n.status, fingerprint=_pem_fingerprint(n.public_key),
                            registered_at=n.registered_at,
                            last_seen=n.last_activated_at if n.HasField("last_activated_at") else "")
             for n in response.nodes_info]
    nodes = [n for n in nodes if include_unregistered or n.status in ACTIVE_STATUSES]
    return sorted(nodes, key=lambda n: n.registered_at)


def register_node(public_key_file: str | Path, institution: str | None = None,
                  connection: str | None = None) -> RegisteredNode:
    """Register a node's public key on the SuperLink under its institution's name."""
    from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=E0611

    pem, fingerprint, name = read_public_key(public_key_file, institution)
    existing = list_nodes(connection)
    for n in existing:
        if n.fingerprint == fingerprint:
            raise UserError(f"{public_key_file}: this key is already registered, as node {n.node_id} "
                            f"('{n.institution or 'no name'}')")
        if n.institution == name:
            raise UserError(f"institution '{name}' is already registered, as node {n.node_id} with key "
                            f"{n.fingerprint}; unregister that node first (flwr supernode unregister {n.node_id}) "
                            "if the institution has a new key")
    with control_client(connection) as client:
        response = _call(client.RegisterNode, RegisterNodeRequest(public_key=pem, name=name), connection)
    if not response.node_id:
        raise UserError(f"the SuperLink did not register {public_key_file}")
    return RegisteredNode(node_id=int(response.node_id), institution=name, status="registered",
                          fingerprint=fingerprint, registered_at="", last_seen="")
