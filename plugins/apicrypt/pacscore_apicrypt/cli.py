"""``pacscore apicrypt ...``: our identity and the correspondents' directory."""

from __future__ import annotations

import sys
from pathlib import Path

from pacscore.db import utcnow

from . import directory


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc


def cmd_identity_import(args, pacs) -> int:
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
    key_data = _read(args.key) if args.key else None
    row = directory.import_identity(pacs, _read(args.file), password, key_data)
    print(f"identity imported: {row.name} <{row.email}> valid until {row.not_after:%Y-%m-%d}")
    return 0


def cmd_identity_show(args, pacs) -> int:
    me = directory.identity(pacs)
    if me is None:
        raise ValueError("no identity imported (pacscore apicrypt identity import FILE)")
    row = me.row
    print(f"{row.name}\t{row.email}\tuntil {row.not_after:%Y-%m-%d}\tsha256 {row.fingerprint}")
    return 0


def cmd_cert_import(args, pacs) -> int:
    total = 0
    for path in args.files:
        added = directory.import_certificates(_read(path))
        total += len(added)
        for row in added:
            print(f"imported {row.email}\t{row.name}\tuntil {row.not_after:%Y-%m-%d}")
    print(f"{total} certificate(s) imported")
    return 0


def cmd_cert_list(args, pacs) -> int:
    now = utcnow()
    rows = directory.list_certificates(args.search or "")
    if not rows:
        print("no certificate")
    for row in rows:
        state = "expired" if row.not_after <= now else f"until {row.not_after:%Y-%m-%d}"
        print(f"{row.id}\t{row.email}\t{row.name}\t{state}\t{row.issuer}")
    return 0


def cmd_cert_remove(args, pacs) -> int:
    if not directory.remove_certificate(args.id):
        raise ValueError(f"no certificate with id {args.id}")
    print(f"certificate {args.id} removed")
    return 0


def add_commands(subparsers) -> None:
    apicrypt = subparsers.add_parser("apicrypt", help="APICrypt keys and directory")
    actions = apicrypt.add_subparsers(dest="apicrypt_command", metavar="ACTION", required=True)

    identity = actions.add_parser("identity", help="our key and certificate").add_subparsers(
        dest="identity_command", metavar="ACTION", required=True
    )
    p = identity.add_parser("import", help="import PKCS#12, or PEM certificate (+ key)")
    p.add_argument("file", type=Path)
    p.add_argument("--key", type=Path, help="PEM private key, if not in FILE")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the PKCS#12/key password from stdin"
    )
    p.set_defaults(func=cmd_identity_import)
    identity.add_parser("show", help="show our certificate").set_defaults(func=cmd_identity_show)

    cert = actions.add_parser("cert", help="correspondents' certificates").add_subparsers(
        dest="cert_command", metavar="ACTION", required=True
    )
    p = cert.add_parser("import", help="import certificates (PEM, DER, PKCS#7)")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_cert_import)
    p = cert.add_parser("list", help="list certificates (id, address, name, expiry, issuer)")
    p.add_argument("--search", help="part of an address or a name")
    p.set_defaults(func=cmd_cert_list)
    p = cert.add_parser("remove", help="remove a certificate")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_cert_remove)
