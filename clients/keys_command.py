"""``fedcredit keys``: an institution's SuperNode key pair for Flower's node authentication.

With ``flower-superlink --enable-supernode-auth`` the SuperLink only admits SuperNodes whose
public key the operator registered (``fedcredit nodes register KEY.pub``). Flower 1.42 reads the
public key with ``load_ssh_public_key`` and the SuperNode's private key
(``--auth-supernode-private-key``) with ``load_ssh_private_key``; both must be ECDSA on a NIST
curve in OpenSSH format — what ``ssh-keygen -t ecdsa -b 384`` writes. This command writes the
same with :mod:`cryptography`, private key 0600 and unencrypted (the SuperNode cannot ask for a
passphrase).
"""

from __future__ import annotations

import argparse

HELP = "create an institution's SuperNode key pair (OpenSSH ECDSA; the .pub goes to the operator)"

DESCRIPTION = """\
Create the key pair an institution's SuperNode uses to authenticate to the SuperLink.

Files written to --out DIR:
  NAME       private key (OpenSSH format, mode 0600): stays on the institution's node host;
             flower-supernode --auth-supernode-private-key DIR/NAME
             (or fedcredit node start --key DIR/NAME)
  NAME.pub   public key, one line "ecdsa-sha2-nistp384 AAAA... NAME": send it to the
             consortium operator, who registers it with
             fedcredit nodes register NAME.pub <connection> (the name is bound to the key)

The key is ECDSA on a NIST curve (--curve p384 by default; p256 and p521 also work), the only
kind Flower 1.42's SuperNode authentication accepts. Give the operator the fingerprint through
a second channel (telephone, signed e-mail) so the public key cannot be swapped on the way.

Existing files are not overwritten unless --force (a new key must be registered again).

Exit codes: 0 written; 2 a mistake (bad name, existing files without --force). With --json the
last line of standard output is {"private_key", "public_key", "fingerprint", "curve"}.
"""
JSON = "{private_key, public_key, fingerprint, curve}"  # what --json prints (fedcredit.cli adds the option)

CURVES = {"p256": ("SECP256R1", "nistp256"), "p384": ("SECP384R1", "nistp384"), "p521": ("SECP521R1", "nistp521")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for NAME and NAME.pub (created)")
    parser.add_argument("--name", required=True, metavar="INSTITUTION",
                        help="institution id: the file name and the key's comment (letters, digits, . _ -)")
    parser.add_argument("--curve", choices=sorted(CURVES), default="p384", help="NIST curve of the ECDSA key")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key pair")


def run(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from configs.errors import UserError
    from fedcredit.atomic_write import write_atomic
    from fedcredit.outcome import Outcome
    from fedcredit.node_keys import check_institution_id, ssh_fingerprint
    from fedcredit.path_checks import check_output_dir

    name = check_institution_id(args.name, "--name")
    out = check_output_dir(args.out, "--out")
    private, public = out / name, out / f"{name}.pub"
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing and not args.force:
        raise UserError(f"{', '.join(existing)} already exist(s); --force replaces the key pair "
                        "(the operator must then register the new public key)")
    out.mkdir(parents=True, exist_ok=True)

    curve_name, _ = CURVES[args.curve]
    key = ec.generate_private_key(getattr(ec, curve_name)())
    private_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption())
    public_line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).decode() + f" {name}"
    write_atomic(private, private_bytes, mode=0o600)  # never readable by others, not even briefly
    write_atomic(public, public_line + "\n", mode=0o644)
    fp = ssh_fingerprint(public_line)
    print(f"private key {private}  (mode 0600; stays on this node host)")
    print(f"public key  {public}  (send to the consortium operator)")
    print(f"fingerprint {fp}  (tell the operator through a second channel)")
    return Outcome({"private_key": str(private), "public_key": str(public), "fingerprint": fp, "curve": args.curve})
