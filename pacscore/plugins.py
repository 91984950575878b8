"""The plugin host: one pluggy manager per application, entry-point loading,
and the one way to call a hook: by the calling convention its spec declares
(:class:`pacscore.hookspecs.Calling`), isolating one plugin's failure from the
others where the convention says so."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from typing import Any

import pluggy

from pacscore import hookspecs
from pacscore.hookspecs import Calling

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pacscore"

# plugin name (shown by `plugins list`, kept in the database) -> module
BUILTIN_PLUGINS = {
    "store_policies": "pacscore.builtin.store_policies",
    "disk_monitor": "pacscore.builtin.disk_monitor",
    "mail": "pacscore.builtin.mail_jobs",
    "send": "pacscore.builtin.send",
    "worklist_timeout": "pacscore.builtin.worklist_timeout",
}


@dataclass
class PluginFailure:
    plugin: str
    hook: str
    error: str
    at: datetime = field(default_factory=datetime.now)


@dataclass
class PluginInfo:
    name: str
    version: str
    enabled: bool
    builtin: bool = False
    error: str | None = None
    local: bool = False  # registered as an object, not loaded from an entry point

    @property
    def state(self) -> str:
        if self.error:
            return "failed"
        return "loaded" if self.enabled else "disabled"


class _Manager(pluggy.PluginManager):
    """pluggy's manager, telling the host when the registered plugins change (so
    each :class:`Hook` resolves its implementations again)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self._on_change = on_change

    def register(self, plugin: object, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            self._on_change()

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        try:
            return super().unregister(plugin, name)
        finally:
            self._on_change()


def _call_order(impl: pluggy.HookImpl) -> int:
    # get_hookimpls() is in registration order (built-ins first); honour
    # tryfirst/trylast like pluggy would when it calls the hook itself.
    return 0 if impl.tryfirst else 2 if impl.trylast else 1


class Hook:
    """One hook, called by the convention its spec declares.

    ``hook(**kwargs)`` applies the convention to every implementation.  The
    ordered implementations are resolved again only after a plugin is
    registered or unregistered (the host's generation changes), not at each
    call: ``filter_store`` and ``wanted("on_store")`` run for every C-STORE.
    Each implementation gets the arguments it declares, positionally, as
    pluggy passes them.
    """

    __slots__ = ("name", "calling", "_host", "_run", "_impls", "_asks")

    def __init__(self, host: PluginHost, name: str, calling: Calling) -> None:
        self.name = name
        self.calling = calling
        self._host = host
        self._run = getattr(self, f"_{calling.kind}")
        # (generation, value): a snapshot read in one attribute access
        self._impls: tuple[int, tuple[pluggy.HookImpl, ...]] = (-1, ())
        self._asks: tuple[int, tuple[pluggy.HookImpl | None, ...]] = (-1, ())

    def __call__(self, **kwargs: Any) -> Any:
        impls = self._impls
        if impls[0] != self._host._generation:
            impls = self._resolve()
        return self._run(impls[1], kwargs)

    def __repr__(self) -> str:
        return f"<Hook {self.name} {self.calling}>"

    def implementations(self) -> tuple[pluggy.HookImpl, ...]:
        """The implementations in call order."""
        impls = self._impls
        if impls[0] != self._host._generation:
            impls = self._resolve()
        return impls[1]

    def call_plugin(self, plugin_name: str, **kwargs: Any) -> Any:
        """The convention applied to the implementation of one plugin only."""
        impls = tuple(i for i in self.implementations() if i.plugin_name == plugin_name)
        return self._run(impls, kwargs)

    def wanted(self, pacs: Any) -> bool:
        """Some plugin implementing this hook wants its calls now: one that does not
        implement ``event_wanted``, or whose ``event_wanted`` does not say ``False``
        (an exception is recorded and counts as wanted)."""
        asks = self._asks
        if asks[0] != self._host._generation:
            asks = self._resolve_asks()
        kwargs = {"pacs": pacs, "hook": self.name}
        for ask in asks[1]:
            if ask is None:
                return True
            try:
                wanted = ask.function(*[kwargs[arg] for arg in ask.argnames])
            except Exception as exc:  # noqa: BLE001 - isolate every plugin
                self._host.record_failure(ask.plugin_name, "event_wanted", exc)
                return True
            if wanted is not False:
                return True
        return False

    def _resolve(self) -> tuple[int, tuple[pluggy.HookImpl, ...]]:
        generation = self._host._generation  # read first: a change meanwhile resolves again
        impls = getattr(self._host.pm.hook, self.name).get_hookimpls()
        self._impls = (generation, tuple(sorted(impls, key=_call_order)))
        return self._impls

    def _resolve_asks(self) -> tuple[int, tuple[pluggy.HookImpl | None, ...]]:
        generation = self._host._generation
        askers = {i.plugin: i for i in self._host.pm.hook.event_wanted.get_hookimpls()}
        self._asks = (generation, tuple(askers.get(i.plugin) for i in self.implementations()))
        return self._asks

    # -- the conventions (see pacscore.hookspecs.Calling) ------------------------

    def _each(self, impls, kwargs) -> list[tuple[str, Any]]:
        return self._each_reporting(impls, kwargs)[0]

    def _each_reporting(self, impls, kwargs) -> tuple[list[tuple[str, Any]], list[str]]:
        results, failed = [], []
        for impl in impls:
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:  # noqa: BLE001 - isolate every plugin
                self._host.record_failure(impl.plugin_name, self.name, exc)
                failed.append(impl.plugin_name)
                continue
            if result is not None:
                results.append((impl.plugin_name, result))
        return results, failed

    def _first(self, impls, kwargs) -> Any:
        for impl in impls:
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:  # noqa: BLE001 - isolate every plugin
                self._host.record_failure(impl.plugin_name, self.name, exc)
                continue
            if result is not None:
                return result
        return None

    def _first_strict(self, impls, kwargs) -> Any:
        for impl in impls:
            result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            if result is not None:
                return result
        return None

    def _chain(self, impls, kwargs) -> Any:
        kwargs, arg = dict(kwargs), self.calling.arg
        for impl in impls:
            result = impl.function(*[kwargs[name] for name in impl.argnames])
            if result is not None:
                kwargs[arg] = result
        return kwargs[arg]


class HookRelay:
    """``host.relay.<hook>(**kwargs)``: every hook, called by its declared convention."""

    def __init__(self, hooks: Mapping[str, Hook]) -> None:
        self.__dict__.update(hooks)

    def __getattr__(self, name: str) -> Hook:  # only for names that are no hook
        raise AttributeError(f"no hook named {name!r}")


class PluginHost:
    """Wraps a :class:`pluggy.PluginManager` built for one application.

    Hooks are called through :attr:`relay` (``host.relay.on_alert(pacs=...,
    ...)``) or :meth:`call` (a hook named at run time), which apply the
    calling convention declared beside the hook's spec; no caller chooses one.
    ``failures`` keeps the most recent errors; ``record_failure`` is also
    forwarded to ``on_failure`` (the application persists them).
    """

    def __init__(self, on_failure: Callable[[PluginFailure], None] | None = None) -> None:
        self._generation = 0  # bumped at each (un)registration: hooks resolve again
        self.pm = _Manager(self._plugins_changed)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._on_failure = on_failure
        self._hooks = {name: Hook(self, name, _calling(caller)) for name, caller in _specs(self.pm)}
        self.relay = HookRelay(self._hooks)

    def _plugins_changed(self) -> None:
        self._generation += 1

    # -- loading -----------------------------------------------------------

    def load_builtins(self) -> None:
        import importlib

        for name, module_name in BUILTIN_PLUGINS.items():
            module = importlib.import_module(module_name)
            self.pm.register(module, name=name)
            self.infos[name] = PluginInfo(name, "builtin", True, builtin=True)

    def load_entry_points(self, disabled: set[str] = frozenset()) -> None:
        """Load every installed plugin of group ``pacscore``.

        A plugin that fails to import is recorded and skipped; a disabled one
        is listed but not registered.
        """
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self.infos:
                continue
            version = ep.dist.version if ep.dist else "?"
            info = PluginInfo(ep.name, version, ep.name not in disabled)
            self.infos[ep.name] = info
            if not info.enabled:
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - any import error is the plugin's
                info.error = f"{type(exc).__name__}: {exc}"
                self.record_failure(ep.name, "load", exc)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object directly (tests, embedding applications)."""
        name = self.pm.register(plugin, name=name)
        self.infos.setdefault(name, PluginInfo(name, "local", True, local=True))

    # -- calling -----------------------------------------------------------

    def record_failure(self, plugin: str, hook: str, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.error("plugin %s failed in %s: %s", plugin, hook, detail, exc_info=exc)
        failure = PluginFailure(plugin, hook, detail)
        self.failures.append(failure)
        del self.failures[:-200]
        if self._on_failure:
            try:
                self._on_failure(failure)
            except Exception:  # the recorder itself must not break the caller
                log.exception("could not persist plugin failure")

    def call(self, hook_name: str, **kwargs: Any) -> Any:
        """Call the hook named ``hook_name`` by its convention (same as ``relay``)."""
        return self.hook(hook_name)(**kwargs)

    def call_plugin(self, plugin_name: str, hook_name: str, **kwargs: Any) -> Any:
        """Call one plugin's implementation of a hook, by the hook's convention
        (``EACH``: ``[(plugin_name, result)]`` or ``[]``)."""
        return self.hook(hook_name).call_plugin(plugin_name, **kwargs)

    def hook(self, hook_name: str) -> Hook:
        try:
            return self._hooks[hook_name]
        except KeyError:
            raise KeyError(f"no hook named {hook_name!r}") from None

    def wanted(self, hook_name: str, pacs: Any) -> bool:
        """Some plugin implementing ``hook_name`` wants its calls now: one that does not
        implement ``event_wanted``, or whose ``event_wanted`` does not say ``False``."""
        return self.hook(hook_name).wanted(pacs)

    def plugins_implementing(self, hook_name: str) -> list[str]:
        """Names of the plugins implementing ``hook_name``, in call order."""
        return [impl.plugin_name for impl in self.hook(hook_name).implementations()]

    def has_implementations(self, hook_name: str) -> bool:
        return bool(self.hook(hook_name).implementations())

    def settings_schema(self, plugin_name: str):
        """The plugin's settings schema, or None (none, not loaded, or it raised)."""
        for _, schema in self.call_plugin(plugin_name, "settings_schema"):
            return schema
        return None

    def follow(self, enabled: Mapping[str, bool]) -> None:
        """Register or unregister the installed plugins whose state differs from
        ``enabled`` (name -> enabled; a plugin not named is enabled).

        Each server process calls it with the database's ``PluginState`` (see
        :meth:`pacscore.app.Pacs.follow_plugin_states`): the console's switch acts in
        the web process, ``pacscore plugins enable`` in none.
        """
        for name, info in list(self.infos.items()):
            wanted = enabled.get(name, True)
            if info.builtin or info.local or wanted == info.enabled:
                continue
            state = "enabled" if wanted else "disabled"
            log.info("plugin %s %s since this process started", name, state)
            self.set_enabled(name, wanted)

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Register or unregister an installed plugin in this process now (the
        console's switch; the other server processes :meth:`follow` within a second).

        Its hooks take effect at once; what is collected at start-up (pages,
        job workers, periodic tasks) changes at the next restart.  Persisting
        the choice (``PluginState.enabled``) is the caller's job.
        """
        info = self.infos.get(name)
        if info is None or info.builtin:
            raise KeyError(f"no installed plugin named {name!r}")
        info.enabled = enabled
        registered = self.pm.get_plugin(name) is not None
        if not enabled and registered:
            self.pm.unregister(name=name)
        elif enabled and not registered:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
                try:
                    self.pm.register(ep.load(), name=name)
                    info.error = None
                except Exception as exc:  # noqa: BLE001 - any import error is the plugin's
                    info.error = f"{type(exc).__name__}: {exc}"
                    self.record_failure(name, "load", exc)

    def list(self) -> list[PluginInfo]:
        return sorted(self.infos.values(), key=lambda i: (not i.builtin, i.name))


def _specs(pm: pluggy.PluginManager):
    return ((name, caller) for name, caller in vars(pm.hook).items() if caller.spec)


def _calling(caller: pluggy.HookCaller) -> Calling:
    calling = getattr(caller.spec.function, "pacscore_calling", None)
    if not isinstance(calling, Calling):
        raise TypeError(
            f"hook {caller.name} declares no calling convention: "
            "declare it with pacscore.hookspecs.hookspec(EACH) (or another convention)"
        )
    return calling
