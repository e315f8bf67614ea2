"""``limner studio``, ``limner worker`` and ``limner user``: serve the studio, run job workers,
manage accounts. Thin callers of ``limner.server`` and ``limner.jobs``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from limner.cli.args import positive_int

STUDIO_DESCRIPTION = """\
Serve the limner studio: the page at http://HOST:PORT/, the HTTP API under /api (OpenAPI at
/docs) and one embedded job worker. Everything lives in --home: the gallery database
(gallery.db, unless --db names a PostgreSQL server), images, thumbnails, runs and uploads.

The studio listens on loopback (127.0.0.1) by default, where no account is needed until one is
created. Binding any other address needs accounts: create the first admin with
`limner user add NAME --admin` (same --home/--db) first.
"""

STUDIO_EPILOG = """\
examples:
  limner studio                                   # http://127.0.0.1:8765/
  limner studio --home ~/limner-studio --port 9000
  limner user add alice --admin && limner studio --host 0.0.0.0
  limner studio --db postgresql+psycopg://studio@db/limner --home /shared/limner --workers 0
"""

WORKER_DESCRIPTION = """\
Run a job worker: it claims generation, training and evaluation jobs from the studio's queue in
the database, runs them, and stores the results under --home. Start any number, on any machine
that reaches the database and sees the same --home folder (a shared file system). A worker that
dies has its job re-queued after the lease expires; a job never completes twice.
"""

USER_DESCRIPTION = """\
Manage studio accounts. Once any account has a password, every request needs a login or an API
key; what was made before accounts existed stays with the implicit "local" user.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("studio", help="serve the web studio", description=STUDIO_DESCRIPTION,
                       epilog=STUDIO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=positive_int, default=8765, help="port (default: 8765)")
    _store_args(p)
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="embedded job workers (default: 1; 0 = only `limner worker` processes run jobs)")
    p.add_argument("--device", default=None, help="where embedded workers run models: cpu, cuda, auto (default: cpu)")
    p.add_argument("--nproc-per-node", default=None, metavar="N",
                   help="processes per training job of the embedded workers, as for `limner worker` (default: 1)")
    p.add_argument("--queue-limit", type=positive_int, default=None, metavar="N",
                   help="queued jobs past which submits answer 429 (default: 100)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another Host name the studio answers to (e.g. behind a reverse proxy); repeatable")
    p.add_argument("--data-root", action="append", default=[], type=Path, metavar="DIR",
                   help="a folder on this machine under which an admin may train from a dataset folder typed "
                        "in the page (besides HOME/datasets); repeatable")
    p.set_defaults(func=run_studio)

    w = sub.add_parser("worker", help="run a job worker against the studio's database",
                       description=WORKER_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _store_args(w)
    w.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    w.add_argument("--kinds", default="generate,train,eval", help="job kinds to take (default: generate,train,eval)")
    w.add_argument("--lease", type=float, default=30.0, metavar="SECONDS",
                   help="lease length; a dead worker's job is re-queued after it (default: 30)")
    w.add_argument("--nproc-per-node", default="1", metavar="N",
                   help="processes per training job: above 1 each training job runs as `limner train` under "
                        "torchrun with N processes (DDP; with --device cuda rank r uses cuda:r); auto = the "
                        "visible CUDA devices (default: 1, in the worker's process)")
    w.set_defaults(func=run_worker)

    u = sub.add_parser("user", help="manage studio accounts", description=USER_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    usub = u.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", help="create an account (asks for its password)",
                          description="Create a studio account. The password is asked twice on the "
                                      "terminal, or read from standard input with --password-stdin.")
    add.add_argument("username", metavar="NAME")
    add.add_argument("--admin", action="store_true", help="give the account the admin role")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _store_args(add)
    add.set_defaults(func=run_user_add)
    ls = usub.add_parser("list", help="list accounts")
    _store_args(ls)
    ls.set_defaults(func=run_user_list)


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", type=Path, default=None, metavar="DIR",
                   help="studio home folder (default: $LIMNER_HOME or ~/.limner)")
    p.add_argument("--db", default=None, metavar="URL",
                   help="database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB (default: SQLite in --home)")


def _settings(args: argparse.Namespace, **extra):
    from limner.server.settings import StudioSettings

    return StudioSettings.from_env(home=args.home, db_url=args.db, **extra)


def _open_store(settings):
    from limner.store.store import Store

    return Store.open(settings.db_url, home=settings.home)


def run_studio(args: argparse.Namespace) -> int:
    import uvicorn

    from limner.errors import UsageError
    from limner.server import accounts
    from limner.server.app import create_app, open_studio
    from limner.server.security import is_loopback

    settings = _settings(args, host=args.host, port=args.port, workers=args.workers, device=args.device,
                         nproc_per_node=args.nproc_per_node,
                         queue_limit=args.queue_limit, allowed_hosts=tuple(args.allowed_host) or None,
                         data_roots=tuple(p.expanduser().resolve() for p in args.data_root) or None)
    studio = open_studio(settings)
    if not is_loopback(settings.host) and not accounts.accounts_on(studio, fresh=True):
        raise UsageError(
            f"{settings.host} is reachable from other machines and no account exists yet. Create the "
            f"first admin with `limner user add NAME --admin{_where(args)}`, then start the studio again "
            "(or keep the default --host 127.0.0.1).", field="host")
    app = create_app(settings, studio=studio)
    print(f"limner studio: http://{_url_host(settings.host)}:{settings.port}/  (home {settings.home})", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", ws="websockets",
                proxy_headers=False, server_header=False)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    import signal

    from limner.jobs.torchrun import resolve_nproc
    from limner.jobs.worker import Worker
    from limner.workflows import resolve_device

    settings = _settings(args)
    nproc = resolve_nproc(args.nproc_per_node)
    store = _open_store(settings)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    worker = Worker(store, settings.home, device=resolve_device(args.device), kinds=kinds, lease_s=args.lease,
                    nproc_per_node=nproc)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    how = f"; training as {nproc} processes under torchrun" if nproc > 1 and "train" in kinds else ""
    print(f"limner worker {worker.name}: taking {', '.join(kinds)} jobs{how} (home {settings.home})", file=sys.stderr)
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        worker.stopping.set()
    print(f"limner worker {worker.name}: stopped after {worker.completed} jobs", file=sys.stderr)
    return 0


def run_user_add(args: argparse.Namespace) -> int:
    from limner.server import accounts

    password = _read_password(args.password_stdin)
    settings = _settings(args)
    store = _open_store(settings)
    user, _ = accounts.add_user(store, args.username, password, role="admin" if args.admin else "user",
                                home=settings.home)
    print(f"created {user.role} {user.username}")
    return 0


def run_user_list(args: argparse.Namespace) -> int:
    store = _open_store(_settings(args))
    for user in store.list_users(store.ensure_local_user()):
        state = "disabled" if user.disabled else "active"
        print(f"{user.id}\t{user.username}\t{user.role}\t{state}")
    return 0


def _read_password(from_stdin: bool) -> str:
    import getpass

    from limner.errors import UsageError

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ", field="password")
    if len(password) < 8:
        raise UsageError("must be at least 8 characters", field="password")
    return password


def _where(args: argparse.Namespace) -> str:
    out = ""
    if args.home is not None:
        out += f" --home {args.home}"
    if args.db is not None:
        out += " --db URL"
    return out


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
