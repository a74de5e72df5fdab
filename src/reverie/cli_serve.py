"""`reverie serve` (the studio: page + APIs) and `reverie users ...` (accounts, keys, credits)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .cli_config import ConfigFile

out = Console(soft_wrap=True, emoji=False)
users_app = typer.Typer(help="Studio accounts for --multi-user: add users, make API keys, grant credits.",
                        no_args_is_help=True)

DataDir = Annotated[Path, typer.Option("--data", help="The studio's folder (gallery database, pictures).")]
BatchLimit = Annotated[int, typer.Option(
    "--batch-limit", min=1, max=64,
    help="Queued jobs with the same model, size and sampling settings share passes of up to this many pictures "
         "(dynamic batching); 1: one job at a time.")]
DEFAULT_DATA = Path("outputs/studio")
Database = Annotated[Optional[str], typer.Option(
    "--database", envvar="REVERIE_DATABASE", show_default=False,
    help="The gallery's database on a server, e.g. postgresql://user:password@host:5432/reverie "
         "(pictures stay under --data); default: gallery.sqlite in --data.")]


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 for the whole network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 7860,
    data: DataDir = DEFAULT_DATA,
    database: Database = None,
    multi_user: Annotated[bool, typer.Option("--multi-user", help="Accounts, logins, API keys and credits.")] = False,
    first_month_credits: Annotated[int, typer.Option("--first-month-credits", help="Free credits in a user's first month.")] = 50,
    monthly_credits: Annotated[int, typer.Option("--monthly-credits", help="Free credits per user in each month after the first.")] = 15,
    credit_pack: Annotated[Optional[list[str]], typer.Option(
        "--credit-pack", help="A pack for sale, CREDITS:PRICE_CENTS:CURRENCY (repeat for more; default 115:1500:usd).")] = None,
    purchase_secret: Annotated[Optional[str], typer.Option(
        "--purchase-webhook-secret", envvar="REVERIE_PURCHASE_WEBHOOK_SECRET", show_default=False,
        help="Secret that signs POST /api/v1/credits/purchases (see SECURITY.md); without it, no purchases.")] = None,
    session_days: Annotated[float, typer.Option("--session-days", help="A login lasts this many days.")] = 14,
    trusted_origin: Annotated[Optional[list[str]], typer.Option(
        "--trusted-origin", help="Another origin whose pages may change things here, e.g. https://studio.example.")] = None,
    queue: Annotated[int, typer.Option("--queue", help="Jobs that may wait at once; past this, 429.")] = 32,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Default model (a name from `reverie models`).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    broker: Annotated[Optional[str], typer.Option(
        "--broker", envvar="REVERIE_BROKER", show_default=False,
        help="redis://HOST:PORT/N: hand jobs to Celery workers (`reverie worker`) instead of running them here.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Check the gallery database (--data's SQLite file, or "
                                                        "--database) and its picture files against each other, "
                                                        "report, and exit (0: all is well, 1: problems).")] = False,
    config: ConfigFile = None,
    batch_limit: BatchLimit = 8,
):
    """Start the studio: the web page and the native, A1111 and OpenAI-compatible APIs."""
    from .gallery.db import DATABASE_FILE, check_database_file

    if check:
        from .gallery.check import check_gallery

        report = check_gallery(data, database)
        for line in report.lines():
            out.print(line, markup=False, highlight=False)
        raise typer.Exit(0 if report.ok else 1)
    if not database:
        check_database_file(data / DATABASE_FILE)  # a broken database is refused before the slow imports

    from .server.app import create_app
    from .server.config import ServerConfig

    config = ServerConfig(data_dir=data, database=database, multi_user=multi_user, first_month_credits=first_month_credits,
                          monthly_credits=monthly_credits, queue_capacity=queue, default_model=model, device=device,
                          purchase_webhook_secret=purchase_secret, session_lifetime_s=int(session_days * 86400),
                          trusted_origins=tuple(trusted_origin or ()), broker=broker, batch_limit=batch_limit)
    if credit_pack:
        config.credit_packs = tuple(_pack(text) for text in credit_pack)
    app = create_app(config)
    if multi_user and not app.state.studio.gallery.users():
        out.print("[yellow]no users yet: add one with `reverie users add NAME --admin`[/yellow]")
    _log_to_stderr()
    out.print(f"reverie studio on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    _run_server(app, host, port)


def worker(
    broker: Annotated[str, typer.Option("--broker", envvar="REVERIE_BROKER",
                                        help="The Redis URL the front ends were started with (redis://HOST:PORT/N).")],
    data: DataDir = DEFAULT_DATA,
    database: Annotated[Optional[str], typer.Option(
        "--database", envvar="REVERIE_DATABASE", show_default=False,
        help="The gallery database's URL, the front ends' (default: the SQLite file in --data).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps: start one worker per device.")] = "auto",
    models: Annotated[Optional[str], typer.Option(
        "--models", help="Serve only these models (a,b), on queues of their own; default: every job.")] = None,
    batch_limit: BatchLimit = 8,
    config: ConfigFile = None,
):
    """Run the studio's jobs for front ends started with `reverie serve --broker` (a Celery worker)."""
    from .jobs.celery_engine import start_worker

    _log_to_stderr()
    start_worker(broker, data, database, device, [name.strip() for name in models.split(",") if name.strip()] if models else None,
                 batch_limit=batch_limit)


def _log_to_stderr() -> None:
    """The server's own log lines (jobs stopped, resumed, failed) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("reverie.server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _run_server(app, host: str, port: int) -> None:
    import uvicorn

    class StudioServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            # uvicorn lets open requests finish before the app's own shutdown, and a request that
            # waits for its job would hold that until the job ends. So the job runner halts first:
            # the running job goes back to the queue and waiting requests get their 503 now.
            app.state.studio.runner.halt()
            await super().shutdown(sockets)

    StudioServer(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()


def _pack(text: str):
    from .errors import ReverieError
    from .gallery.credits import CreditPack

    credits, _, rest = text.partition(":")
    price, _, currency = rest.partition(":")
    if not (credits.isdigit() and price.isdigit() and int(credits) > 0):
        raise ReverieError(f"--credit-pack {text!r}: write CREDITS:PRICE_CENTS:CURRENCY, e.g. 115:1500:usd")
    return CreditPack(credits, int(credits), int(price), currency or "usd")


def _gallery(data: Path, database: str | None = None):
    from .gallery.store import Gallery

    return Gallery(data, database=database)


@users_app.command("add")
def add_user(name: str, data: DataDir = DEFAULT_DATA, database: Database = None,
             admin: Annotated[bool, typer.Option("--admin", help="May manage users.")] = False,
             password: Annotated[Optional[str], typer.Option("--password", help="For the page; asked for when left out.")] = None):
    """Add a user (with a password for the page)."""
    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    user = _gallery(data, database).add_user(name, password, admin)
    out.print(f"added {user.name}{' (admin)' if admin else ''}")


@users_app.command("key")
def new_key(name: str, data: DataDir = DEFAULT_DATA, database: Database = None):
    """Make an API key for a user's programs (shown once; only its hash is kept)."""
    gallery = _gallery(data, database)
    out.print(gallery.new_api_key(gallery.user(name).id))


@users_app.command("grant")
def grant(name: str, credits: int, data: DataDir = DEFAULT_DATA, database: Database = None,
          purchase: Annotated[bool, typer.Option("--purchase", help="Record as a purchase rather than a grant.")] = False,
          note: Annotated[str, typer.Option("--note")] = ""):
    """Add credits to a user's ledger."""
    from .errors import ReverieError

    if credits <= 0:
        raise ReverieError("credits: grant a positive number of credits")
    gallery = _gallery(data, database)
    user = gallery.user(name)
    gallery.grant(user.id, credits, "purchase" if purchase else "grant", note)
    out.print(f"{name}: +{credits}, balance {gallery.balance(user.id)}")


@users_app.command("list")
def list_users(data: DataDir = DEFAULT_DATA, database: Database = None):
    """Users and their balances."""
    gallery = _gallery(data, database)
    for user in gallery.users():
        out.print(f"{user.name:<24} {'admin' if user.is_admin else '':<6} {gallery.balance(user.id):>6} credits")
