"""`python -m server` / `talkie-server`: serve, or manage devices and the parent's password."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys

from server import db as sdb
from server import openapi
from server.app import Settings, serve

DEFAULT_DB = os.environ.get("TALKIE_SERVER_DB", "talkie-server.db")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="talkie-server", description=__doc__)
    p.add_argument("--db", default=DEFAULT_DB,
                   help="SQLite file (default $TALKIE_SERVER_DB or ./talkie-server.db)")
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="run the server (the default)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8750)
    s.add_argument("--behind-proxy", action="store_true",
                   help="plain HTTP is fine: a TLS proxy in front forwards to this port")
    s.add_argument("--tls-cert", default="", help="PEM certificate chain to serve HTTPS")
    s.add_argument("--tls-key", default="", help="PEM private key for --tls-cert")
    s.add_argument("--retention-days", type=float, default=365.0)
    s.add_argument("--max-body", type=int, default=1 << 20, help="bytes; larger bodies get 413")
    s.add_argument("-v", "--verbose", action="store_true")
    a = sub.add_parser("add-device", help="register a box; prints its token once")
    a.add_argument("name")
    r = sub.add_parser("remove-device", help="forget a box and everything it sent")
    r.add_argument("name")
    pw = sub.add_parser("set-password", help="set the parents' page password")
    pw.add_argument("--stdin", action="store_true", help="read the password from stdin")
    sub.add_parser("openapi", help="print the OpenAPI description")
    pr = sub.add_parser("prune", help="delete conversations older than N days now")
    pr.add_argument("days", type=float)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cmd = args.cmd or "serve"
    try:
        if cmd == "serve":
            if args.cmd is None:  # bare `python -m server`: serve with the defaults
                args = _parser().parse_args([*(argv or sys.argv[1:]), "serve"])
            logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            serve(Settings(db=args.db, host=args.host, port=args.port,
                           behind_proxy=args.behind_proxy, tls_cert=args.tls_cert,
                           tls_key=args.tls_key, retention_days=args.retention_days,
                           max_body=args.max_body))
            return 0
        if cmd == "openapi":
            sys.stdout.write(openapi.text())
            return 0
        con = sdb.open_db(args.db)
        if cmd == "add-device":
            token = sdb.add_device(con, args.name)
            print(token)
            print(f"device {args.name!r} added; put the line above in the box's token file "
                  f"([sync] token_file). It is not shown again.", file=sys.stderr)
        elif cmd == "remove-device":
            if not sdb.remove_device(con, args.name):
                print(f"no device named {args.name!r}", file=sys.stderr)
                return 1
        elif cmd == "set-password":
            if args.stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass("New password: ")
                if getpass.getpass("Again: ") != password:
                    print("the passwords differ; nothing changed", file=sys.stderr)
                    return 1
            if len(password) < 8:
                print("use at least 8 characters; nothing changed", file=sys.stderr)
                return 1
            sdb.set_password(con, password)
            print("password set", file=sys.stderr)
        elif cmd == "prune":
            print(f"deleted {sdb.prune(con, args.days)} conversations", file=sys.stderr)
        return 0
    except sdb.ServerConfigError as e:
        print(f"talkie-server: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
