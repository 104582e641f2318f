"""``fedcredit certs``: the consortium's certificate authority and the SuperLink's TLS certificate.

Flower's SuperLink serves one HTTPS port; SuperNodes and the ``flwr`` CLI check its certificate
against a root certificate they are given (``--root-certificates`` / ``root-certificates`` in
the connection). This command makes both ends with :mod:`cryptography`:

* ``ca.crt`` / ``ca.key`` — a self-signed consortium CA (ECDSA P-384, CA:TRUE, path length 0).
  ``ca.crt`` is public: every institution and every operator machine gets a copy. ``ca.key``
  signs server certificates only; keep it offline.
* ``server.crt`` / ``server.key`` — the SuperLink's certificate, signed by the CA, with the
  given host names and IP addresses as subject alternative names (what clients check), for
  server authentication only. ``server.key`` stays on the SuperLink host.

Private keys are written with mode 0600.
"""

from __future__ import annotations

import argparse
import ipaddress
import re

HELP = "create the consortium CA and the SuperLink's TLS certificate (ca.crt, server.crt, keys)"

DESCRIPTION = """\
Create the consortium's certificate authority and the SuperLink's TLS server certificate.

Files written to --out DIR:
  ca.crt       consortium CA certificate: give a copy to every institution (flower-supernode
               --root-certificates) and to every machine that runs `flwr` (root-certificates
               in the connection of $FLWR_HOME/config.toml); public
  ca.key       CA private key (0600): signs server certificates; keep it offline, never on
               the SuperLink host if you can avoid it
  server.crt   SuperLink certificate, signed by the CA (flower-superlink --ssl-certfile)
  server.key   SuperLink private key (0600) (flower-superlink --ssl-keyfile)

--hosts lists every name and address clients use to reach the SuperLink, comma-separated:
DNS names (superlink.consortium.example, *.consortium.example) and IPv4/IPv6 addresses
(203.0.113.7, 2001:db8::7). They become the certificate's subject alternative names, which
SuperNodes check: a SuperNode that connects by a name or address not in the list is refused.
For a test on one machine use --hosts localhost,127.0.0.1.

Existing files are not overwritten unless --force (which makes a new CA: every institution must
then get the new ca.crt). To add a host name later without changing the CA, keep ca.crt/ca.key
in DIR and run again with --reuse-ca --force: only server.crt/server.key are replaced.

Keys are ECDSA on NIST P-384; certificates are valid for --days (server) and --ca-days (CA).

Exit codes: 0 written; 2 a mistake (bad host name, existing files without --force, missing CA
with --reuse-ca). With --json the last line of standard output is a JSON summary:
  {"out", "ca_cert", "ca_key", "server_cert", "server_key", "hosts", "ca_sha256", "server_sha256",
   "not_after"}
"""
JSON = "a summary (the written files, hosts, fingerprints)"  # what --json prints (fedcredit.cli adds the option)

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.crt", "server.key"

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def parse_hosts(text: str) -> list[str]:
    """Validate a comma-separated host list; returns the hosts (IP addresses normalised)."""
    from configs.errors import UserError

    hosts: list[str] = []
    for raw in text.split(","):
        host = raw.strip()
        if not host:
            continue
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            hosts.append(str(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _valid_dns_name(host):
            why = ("a host, not a URL: drop the scheme" if "://" in host else
                   "a host without a port: drop ':PORT'" if re.search(r":\d+$", host) else
                   "letters, digits and hyphens in dot-separated labels of at most 63 characters, "
                   "253 in all (an optional leading '*.' for a wildcard)")
            raise UserError(f"--hosts: '{raw.strip()}' is not a DNS name or IP address; expected {why}")
        hosts.append(host.lower().rstrip("."))
    if not hosts:
        raise UserError("--hosts: give at least one DNS name or IP address, e.g. --hosts superlink.example.org "
                        "or --hosts localhost,127.0.0.1")
    return list(dict.fromkeys(hosts))


def _valid_dns_name(host: str) -> bool:
    name = host.rstrip(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return False
    if all(label.isdigit() for label in labels):
        return False  # looks like a broken IPv4 address
    return all(_LABEL.match(label) for label in labels)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the four files (created)")
    parser.add_argument("--hosts", required=True, metavar="H1,H2,...",
                        help="DNS names and IP addresses of the SuperLink, comma-separated")
    parser.add_argument("--days", type=int, default=825, metavar="N", help="validity of the server certificate")
    parser.add_argument("--ca-days", type=int, default=3650, metavar="N", help="validity of a new CA certificate")
    parser.add_argument("--name", default="fedcredit consortium", metavar="TEXT",
                        help="organisation name written into the certificates")
    parser.add_argument("--reuse-ca", action="store_true",
                        help="sign with the ca.crt/ca.key already in DIR instead of making a new CA")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


#: file modes: private keys readable by their owner only; certificates by anyone
PRIVATE, PUBLIC = 0o600, 0o644


def run(args: argparse.Namespace) -> int:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from configs.errors import UserError
    from fedcredit.atomic_write import write_atomic
    from fedcredit.outcome import Outcome
    from fedcredit.path_checks import check_output_dir

    hosts = parse_hosts(args.hosts)
    if args.days < 1 or args.ca_days < 1:
        raise UserError("--days and --ca-days must be at least 1")
    out = check_output_dir(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    targets = [SERVER_CERT, SERVER_KEY] if args.reuse_ca else [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
    existing = [n for n in targets if (out / n).exists()]
    if existing and not args.force:
        hint = ("--force replaces them" + ("" if args.reuse_ca else
                "; --reuse-ca --force keeps the CA and replaces only the server certificate"))
        raise UserError(f"{out}: {', '.join(existing)} already exist(s); {hint}")

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, args.name)
    if args.reuse_ca:
        missing = [n for n in (CA_CERT, CA_KEY) if not (out / n).is_file()]
        if missing:
            raise UserError(f"--reuse-ca: {', '.join(missing)} not found in {out}")
        try:
            ca_cert = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
            ca_key = serialization.load_pem_private_key((out / CA_KEY).read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise UserError(f"--reuse-ca: cannot load the CA in {out} ({exc})") from None
        if ca_cert.public_key().public_numbers() != ca_key.public_key().public_numbers():
            raise UserError(f"--reuse-ca: {out / CA_KEY} is not the key of {out / CA_CERT}")
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, f"{args.name} CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=args.ca_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(ca_key, hashes.SHA384())
        )

    server_key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    not_after = min(now + dt.timedelta(days=args.days), ca_cert.not_valid_after_utc)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    if not args.reuse_ca:
        write_atomic(out / CA_KEY, ca_key.private_bytes(pem, pkcs8, none), mode=PRIVATE)
        write_atomic(out / CA_CERT, ca_cert.public_bytes(pem), mode=PUBLIC)
    write_atomic(out / SERVER_KEY, server_key.private_bytes(pem, pkcs8, none), mode=PRIVATE)
    write_atomic(out / SERVER_CERT, server_cert.public_bytes(pem), mode=PUBLIC)

    ca_fp = ca_cert.fingerprint(hashes.SHA256()).hex(":").upper()
    srv_fp = server_cert.fingerprint(hashes.SHA256()).hex(":").upper()
    print(f"{'reused' if args.reuse_ca else 'new'} consortium CA  {out / CA_CERT}  (key {out / CA_KEY}, keep offline)")
    print(f"  SHA-256 fingerprint {ca_fp}")
    print("  send ca.crt to every institution; they can check this fingerprint with")
    print("  openssl x509 -in ca.crt -noout -fingerprint -sha256")
    print(f"SuperLink certificate {out / SERVER_CERT}  (key {out / SERVER_KEY})")
    print(f"  hosts: {', '.join(hosts)}; valid until {not_after:%Y-%m-%d}")
    print(f"  flower-superlink --ssl-ca-certfile {out / CA_CERT} --ssl-certfile {out / SERVER_CERT} "
          f"--ssl-keyfile {out / SERVER_KEY} ...")
    return Outcome({"out": str(out), "ca_cert": str(out / CA_CERT), "ca_key": str(out / CA_KEY),
                    "server_cert": str(out / SERVER_CERT), "server_key": str(out / SERVER_KEY),
                    "hosts": hosts, "ca_sha256": ca_fp, "server_sha256": srv_fp, "not_after": not_after.isoformat()})
