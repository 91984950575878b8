"""Every hook pacscore offers to plugins, declared once.

Each docstring is the contract: when the hook fires, in which thread, what it
may return and what happens when an implementation raises.  Implement a hook
with ``@pacscore.hookimpl`` on a function or method of the same name; declare
only the arguments you use (pluggy passes them by name).

Each hook also declares, once, how the core calls its implementations:
``@hookspec(EACH)`` and the other conventions of :class:`Calling`.  The
plugin host applies it at every call site (``pacs.hooks.relay.on_store(...)``
or ``pacs.hooks.call("on_store", ...)``: a call site cannot choose), and the
last paragraph of each docstring, generated from it, states it.  Most hooks
are ``EACH``: every implementation is called *in isolation*, an exception in
one plugin is logged and recorded (plugin, hook, error, time; see ``pacscore
plugins list``) and the other plugins are still called.  A plugin never
breaks a DICOM association or loses data by raising.

Arguments common to many hooks:

``pacs``
    The running :class:`pacscore.app.Pacs` (configuration, settings, archive,
    plugin host).  It is the public core API available to plugins.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    import argparse
    from email.message import EmailMessage

    import flask
    import marshmallow
    import peewee

    from pacscore.app import Pacs
    from pacscore.archive import DeletedInstance, IncomingInstance, StoredInstance
    from pacscore.jobs import JobHandler
    from pacscore.scheduler import PeriodicTask

hookimpl = pluggy.HookimplMarker("pacscore")
_spec = pluggy.HookspecMarker("pacscore")
_F = TypeVar("_F", bound=Callable[..., Any])


# --- calling conventions -------------------------------------------------------

_DESCRIPTIONS = {
    "each": "every implementation is called, each in isolation (an exception is "
    "recorded and the others are still called); the caller gets the (plugin name, "
    "result) pairs of the results that are not None.",
    "each_reporting": "every implementation is called, each in isolation; the caller "
    "gets the (plugin name, result) pairs of the results that are not None and the "
    "names of the plugins that raised (recorded too).",
    "first": "implementations are called in order, each in isolation, until one "
    "returns something other than None: that result is the answer (None when none "
    "does); an exception is recorded and counts as None.",
    "first_strict": "implementations are called in order until one returns something "
    "other than None: that result is the answer (None when none does).  Not "
    "isolated: an exception stops the call and reaches the caller.",
    "chain": "implementations are called in order, each receiving as {arg!r} the "
    "previous one's result (None keeps the value); the caller gets the last value.  "
    "Not isolated: an exception stops the call and reaches the caller.",
}


@dataclass(frozen=True)
class Calling:
    """How the core calls the implementations of one hook.

    Declared beside the spec with :func:`hookspec` and applied by
    :class:`pacscore.plugins.PluginHost` to every call of the hook.  In every
    convention, implementations run in registration order (built-ins first),
    ``tryfirst``/``trylast`` honoured.
    """

    kind: str  # each | each_reporting | first | first_strict | chain
    arg: str | None = None  # chain: the argument handed from one implementation to the next

    def __post_init__(self) -> None:
        if self.kind not in _DESCRIPTIONS or (self.kind == "chain") != (self.arg is not None):
            raise ValueError(f"no such calling convention: {self.kind!r} (arg {self.arg!r})")

    @property
    def firstresult(self) -> bool:
        """pluggy's ``firstresult``: the answer is one result, not a list."""
        return self.kind in ("first", "first_strict")

    def describe(self) -> str:
        return _DESCRIPTIONS[self.kind].format(arg=self.arg)

    def __str__(self) -> str:
        return f'CHAIN("{self.arg}")' if self.kind == "chain" else self.kind.upper()


EACH = Calling("each")
EACH_REPORTING = Calling("each_reporting")
FIRST = Calling("first")
FIRST_STRICT = Calling("first_strict")


def CHAIN(arg: str) -> Calling:  # upper case: reads like the other conventions
    """Pass the argument ``arg`` through every implementation."""
    return Calling("chain", arg)


def hookspec(calling: Calling) -> Callable[[_F], _F]:
    """Declare a hook and how it is called: ``@hookspec(EACH)``.

    The hook is a pluggy spec (with ``firstresult`` for ``FIRST`` and
    ``FIRST_STRICT``, so pluggy and pacscore agree on the shape of the answer),
    and its docstring gets a last paragraph stating the convention.
    """
    if not isinstance(calling, Calling):
        raise TypeError(
            f"@hookspec needs the hook's calling convention, e.g. @hookspec(EACH), not {calling!r}"
        )

    def declare(func: _F) -> _F:
        func.pacscore_calling = calling  # type: ignore[attr-defined]
        paragraph = textwrap.fill(f"Calling convention {calling}: {calling.describe()}", 76)
        func.__doc__ = f"{inspect.cleandoc(func.__doc__ or '')}\n\n{paragraph}"
        return _spec(firstresult=calling.firstresult)(func)

    return declare


# --- lifecycle -------------------------------------------------------------


@hookspec(EACH)
def on_startup(pacs: Pacs) -> None:
    """The server has started its listeners (``pacscore serve``).

    Fires once, in the main thread, after the DICOM listener is up and before
    the process waits for a signal.  Use it to start a plugin's own listener
    (for instance an HL7 MLLP server on ``pacs.config.hl7_port``).  Return
    nothing.  An exception is recorded; the server keeps running.
    """


@hookspec(EACH)
def on_shutdown(pacs: Pacs) -> None:
    """The server is stopping (SIGTERM/SIGINT).

    Fires once in the main thread, before the listeners close.  Stop threads
    and close connections the plugin opened in ``on_startup``.  An exception
    is recorded and shutdown goes on.
    """


# --- settings --------------------------------------------------------------


@hookspec(EACH)
def settings_schema() -> marshmallow.Schema | None:
    """Return a marshmallow schema (instance) describing the plugin's settings.

    Called when the plugin is loaded and whenever its settings are read or
    written.  Every field should have a ``load_default`` so that a plugin works
    before an administrator saves anything.  The console builds the settings
    form from it and ``pacscore plugins configure`` validates against it;
    values are stored in the database and read with
    ``pacs.plugin_settings(name)``.  Return ``None`` (or do not implement) if
    the plugin has no settings.  An exception makes the plugin's settings
    unavailable and is recorded.
    """


# --- database ----------------------------------------------------------------


@hookspec(EACH_REPORTING)
def database_models() -> list[type[peewee.Model]] | None:
    """Return the peewee models (tables) the plugin keeps in pacscore's database.

    Called in every pacscore process that loads plugins (``pacscore init``,
    ``serve`` and each DICOM listener process, the commands that load
    plugins), once the plugin is registered and before anything queries its
    tables, and again when the plugin is enabled while the server runs.  The
    core then creates the missing tables and indexes, adds to an existing
    table the columns its model gained (each new column needs a default or
    ``null=True``), and runs the plugin's ``database_migrations`` steps not yet
    applied.  A plugin installed later gets its tables at the next start.

    Return a list of model classes that subclass
    :class:`pacscore.models.BaseModel` (bound to the core's database), with
    table names of their own (not a core table's); ``None`` or nothing if the
    plugin has no tables.  Models must not change between calls.

    An exception, or an answer that is not such a list, is recorded; the plugin
    is marked failed and unregistered (none of its hooks are called, as for a
    plugin that fails to import) and its tables are not created or changed.
    The server still starts.
    """


@hookspec(EACH_REPORTING)
def database_migrations() -> list[tuple[str, Callable[[], None]]] | None:
    """Return the plugin's named schema upgrade steps, in the order they run.

    Called right after ``database_models`` (same processes, same moments).
    Each ``(name, function)`` runs once per database, in its own
    transaction, with a connection open, and is recorded in
    ``AppliedMigration`` as ``"<plugin>:<name>"``: never rename or reorder a
    step that was released.  Only what adding a field cannot do needs a step
    (a rename, a type change, data to move or fill in): new tables, indexes
    and columns are the ``database_models`` machinery's.  When every table of
    the plugin is new (its first start on this database, a fresh install),
    its steps are recorded without running: the models already have the shape
    the steps produce.  A plugin without models runs its steps at its first
    start.

    Return a list of pairs, or ``None``.  An exception here or in a step is
    recorded and rolls that step back: the plugin is marked failed and
    unregistered, the steps after it do not run, and the next start tries
    again.  The server still starts.
    """


# --- storage -----------------------------------------------------------------


@hookspec(FIRST)
def filter_store(pacs: Pacs, instance: IncomingInstance) -> str | None:
    """Decide whether an incoming instance may be stored, before it is written.

    Fires in the thread that received the instance (a DICOM association
    thread, or the ``pacscore import`` process) for every instance, after its
    header has been read and before anything touches the disk.  Keep it fast:
    the sender waits.  Return ``None`` to accept, or a short reason (``str``)
    to refuse; a refusal becomes a C-STORE failure status ``0xC001`` whose
    Error Comment is the reason, and the instance is not stored.
    Implementations are asked in registration order (built-ins first) until
    one refuses.  An implementation
    that raises is recorded and counts as "accept" (refusing on a bug would
    lose images).
    """


@hookspec(EACH)
def on_store(pacs: Pacs, instance: StoredInstance) -> None:
    """An instance was stored: its file is durable and its index row committed.

    Fires in the dispatcher thread, never in the association thread, so a
    slow plugin does not delay a C-STORE response.  Delivery is *at least
    once*: the event is written to an outbox table in the same transaction as
    the index row and removed only after every implementation has been
    called, so an event in flight when the process dies is delivered again
    at the next start.  Implementations must therefore be idempotent.  Return
    nothing.  An exception is recorded and does not cause a redelivery.
    """


@hookspec(EACH)
def event_wanted(pacs: Pacs, hook: str) -> bool | None:
    """Whether this plugin needs the calls of its event hook ``hook`` now.

    ``hook`` is one of the hooks delivered through the outbox (``on_store``,
    ``on_delete``, ``on_worklist_change``) that this plugin implements.  Asked
    in the association (or deleting, or web) thread, inside the transaction
    that would record the event, each time one would be recorded: keep it to
    a settings read.  Return ``False`` when the plugin has nothing to do with
    such an event (a router without per-instance rules); ``None`` or ``True``
    when it may.  An event that no implementation of ``hook`` wants is not
    recorded at all, which saves the outbox row and the dispatcher's work
    (about a tenth of the CPU of storing a small instance).  The core asks
    the plugins implementing ``hook`` one at a time (``PluginHost.wanted``),
    each in isolation, and stops at the first that wants it.  It is only a
    hint: when another plugin wants the event, every implementation is
    called, so the hook itself must still check.  A plugin that does not
    implement ``event_wanted`` wants every event; an exception is recorded
    and counts as wanted.
    """


@hookspec(EACH)
def on_study_stable(pacs: Pacs, study_uid: str, patient_id: str, num_instances: int) -> None:
    """No new instance arrived for a study during ``study_stable_seconds``.

    Fires in the dispatcher thread, once per quiet period: a study that
    receives new instances later becomes unstable again and fires again.
    Delivery is at least once (the stable flag is committed after the call).
    Return nothing; exceptions are recorded.
    """


@hookspec(EACH)
def on_delete(pacs: Pacs, instance: DeletedInstance) -> None:
    """An instance was removed from the archive (index row and file).

    Fires in the dispatcher thread after the deletion committed, at least
    once, through the same outbox as ``on_store``.  ``instance.reason`` says
    why (``"user"``, a purge rule, ...).  Return nothing; exceptions are
    recorded.
    """


@hookspec(EACH_REPORTING)
def retention_holds(pacs: Pacs, study_uids: list[str]) -> dict[str, str] | None:
    """Say which of these studies must not be deleted automatically yet.

    Asked by automatic deletions (a purge plugin) before they delete, with a
    batch of Study Instance UIDs; a user's explicit deletion does not ask.
    Return ``{study_uid: reason}`` for the studies to keep (for instance a
    router with a send to an upstream node still pending), or ``None``.  The
    answers of every plugin are combined.  Called in the thread doing the
    deletion.  An exception is recorded and counts as "hold every study of
    the batch" (deleting on a bug would lose images).
    """


@hookspec(EACH)
def on_alert(pacs: Pacs, kind: str, message: str, details: dict[str, Any]) -> None:
    """Something an administrator must know about happened.

    Fires whenever code holding the ``pacs`` calls ``pacs.alert(kind,
    message, **details)``.  The core's kinds, and their ``details``:

    - ``storage_full``: no enabled storage folder can take an incoming file
      above its free-space limit; the instance is refused (``sop_uid``,
      ``size``).
    - ``storage_unavailable``: the disk check (every minute) cannot read a
      storage folder's free space (``storage``); raised at each check while
      it lasts.
    - ``low_disk_space``: a folder's free space is under the core setting
      ``low_disk_alert_mb`` (``storage``, ``free_mb``); at most once an hour
      per folder.
    - ``file_save_error``: writing an incoming file failed (``storage``) or
      indexing it failed (no details); the instance is refused.

    Plugins raise kinds of their own (the bundled ``ldap_auth`` raises
    ``ldap_unavailable``): an implementation ignores the kinds it does not
    know.  Fires in the thread that noticed the problem (an association,
    the scheduler, a web request); implementations must return quickly
    (queue a mail job, do not send it inline).  Return nothing; an
    exception is recorded and never reaches the code that raised the alert.
    """


# --- scheduled work ----------------------------------------------------------


@hookspec(EACH)
def periodic_tasks(pacs: Pacs) -> list[PeriodicTask] | None:
    """Return the periodic tasks the plugin wants run.

    Called once at server start.  Each :class:`pacscore.scheduler.PeriodicTask`
    names a function and an interval in seconds; the scheduler thread calls
    ``task.func(pacs)`` every interval (the first call one interval after
    start).  Tasks of all plugins share the scheduler thread: a long task
    should enqueue work rather than do it inline.  A task that raises is
    recorded and called again at its next interval.
    """


@hookspec(EACH)
def job_handlers(pacs: Pacs) -> dict[str, JobHandler] | None:
    """Return the job kinds the plugin runs: ``{kind: JobHandler}``.

    Called once at server start (before the job workers start) and by
    ``pacs.jobs`` when it needs a kind's retry schedule.  Jobs are durable
    rows enqueued by anyone with ``pacs.jobs.enqueue(kind, payload)``; for
    each kind, ``handler.concurrency`` worker threads each take one due job at
    a time and call ``handler.func(pacs, payload)`` with a database connection
    open.  A job may run more than once (a process killed while it ran takes
    it again at the next start): ``func`` must be idempotent.  ``func``
    raises to fail the attempt: the job is retried after the delays of
    ``handler.retry_schedule`` (default one hour, one day, two days, a week),
    then marked ``failed``; raising :class:`pacscore.jobs.PermanentJobError`
    marks it ``failed`` at once (retrying cannot help).  A kind already
    claimed by another plugin, a value
    that is not a ``JobHandler``, or an exception here is recorded, and the
    plugin's kinds (or that kind) are not run.
    """


# --- worklist, users, console (fired by later capabilities) -------------------


@hookspec(EACH)
def on_worklist_change(
    pacs: Pacs, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> None:
    """A Modality Worklist entry was created, updated or changed status.

    ``before`` is ``None`` on creation and ``after`` is ``None`` on deletion;
    otherwise both are the entry's state as plain dicts (requested procedure
    with its scheduled procedure steps, see ``pacscore.worklist.to_dict``).
    Changes made through ``pacs.worklist`` (HL7 feed, MPPS, overdue sweep,
    console) enqueue it in their transaction.  Fires in the dispatcher
    thread, at least once.  Return nothing; exceptions are recorded.
    """


@hookspec(EACH)
def on_login(pacs: Pacs, login: str, success: bool, method: str, source_ip: str) -> None:
    """A login was attempted on the console or the API, successful or not.

    ``method`` is ``"local"``, ``"token"``, ``"basic"`` or the name a plugin
    gave in ``authenticate``.  Fires in the web request thread after the
    decision; keep it fast.  Return nothing; exceptions are recorded.
    """


@hookspec(FIRST)
def authenticate(pacs: Pacs, login: str, password: str) -> dict[str, Any] | None:
    """Accept or refuse credentials before the local password check.

    firstresult: the first implementation returning something other than
    ``None`` decides.  Return ``None`` to let the next plugin (and finally
    the local accounts) decide; ``{"accepted": True, "method": "ldap",
    "user": {...attributes...}}`` to accept; ``{"accepted": False, "method":
    ..., "reason": "..."}`` to refuse.  Fires in the web request thread.  An
    exception is recorded and treated as ``None``.  Lockout applies whatever
    the method, except to a refusal that also carries ``"unavailable": True``
    (the authority could not be reached, so no password was checked).  An
    accepted account becomes managed by the plugin (``auth_source`` = the
    method, no local password): when the plugin later returns ``None`` it is
    refused, never checked against a stale local password.
    """


@hookspec(EACH)
def register_blueprints(pacs: Pacs, app: flask.Flask) -> None:
    """Contribute console pages or API routes: call ``app.register_blueprint``.

    Called once per application factory call, in the thread creating the web
    application.  Every route must declare the right it needs with
    ``pacscore.web.security.require_right(name)`` (or ``public`` /
    ``authenticated``): an undeclared route is refused to everyone.  An
    exception is recorded and the console starts without the plugin's pages.
    """


# --- mail ---------------------------------------------------------------------


@hookspec(CHAIN("message"))
def prepare_mail(pacs: Pacs, message: EmailMessage) -> EmailMessage | None:
    """Transform an outgoing e-mail before it is delivered.

    Called in the thread sending the mail (a ``mail`` job worker, or a
    command sending a test mail), for every mail enqueued with
    ``pacs.send_mail``, in plugin registration order (``tryfirst``/``trylast``
    honoured); each implementation receives the message returned by the
    previous one.  The message has ``To``, ``Subject``, ``Date``,
    ``Message-ID``, maybe ``Reply-To``, and ``X-Pacscore-Mail-Kind`` (the
    ``kind`` given to ``send_mail``, removed before delivery); a plugin that
    delivers mail fills in ``From``.  Return a new message (for instance an
    S/MIME encrypted one) or ``None`` to leave it unchanged (changing it in
    place is fine too).  Unlike most hooks, an exception here *aborts the
    delivery* and fails the mail job with the error (retried on the mail
    schedule; :class:`pacscore.jobs.PermanentJobError` fails it at once): a
    plugin that must encrypt can refuse a clear-text send.
    """


@hookspec(FIRST_STRICT)
def deliver_mail(pacs: Pacs, message: EmailMessage) -> bool | None:
    """Deliver an e-mail (after ``prepare_mail``).

    firstresult: the first implementation returning ``True`` delivered it;
    when every one answers ``None`` ("not handled here"), or none is
    installed, the mail job fails with "no plugin delivers e-mail" and is
    retried.  Called in a job worker thread.  Not isolated: raise to signal
    a failure, a plain exception for a temporary one (server down, SMTP 4xx:
    the job is retried on the mail schedule, from a minute to a week),
    :class:`pacscore.jobs.PermanentJobError` for one retrying cannot fix
    (SMTP 5xx for a recipient): the job fails at once with that message.
    """


# --- command line -------------------------------------------------------------


@hookspec(EACH)
def cli_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pacscore`` subcommands: ``subparsers.add_parser("name", ...)``.

    Called when the command line is parsed, before the home is known, for
    every installed plugin (the disabled ones too; their commands then
    refuse to run).  Give each parser you add (or its subparsers)
    ``set_defaults(func=f)``: ``f(args, pacs)`` is called with the opened
    :class:`pacscore.app.Pacs` (plugins loaded) and a database connection,
    and returns the exit status.  Raise ``ValueError`` (or
    ``pacscore.cli.CommandError``) for a user error: printed as ``error:
    ...``, exit status 1.  Return nothing.  An exception here is logged and
    the plugin's commands are missing.
    """
