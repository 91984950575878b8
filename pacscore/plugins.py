"""The plugin host: one pluggy manager per application, entry-point loading,
and hook calls that isolate one plugin's failure from the others."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from typing import Any

import pluggy

from pacscore import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pacscore"

BUILTIN_PLUGINS = (
    "pacscore.builtin.store_policies",
    "pacscore.builtin.disk_monitor",
    "pacscore.builtin.mail",
    "pacscore.builtin.send",
    "pacscore.builtin.worklist_timeout",
)


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


class PluginHost:
    """Wraps a :class:`pluggy.PluginManager` built for one application.

    ``failures`` keeps the most recent errors; ``record_failure`` is also
    forwarded to ``on_failure`` (the application persists them).
    """

    def __init__(self, on_failure=None) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._on_failure = on_failure

    # -- loading -----------------------------------------------------------

    def load_builtins(self) -> None:
        import importlib

        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            name = module_name.rsplit(".", 1)[1]
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

    def _implementations(self, hook_name: str):
        # get_hookimpls() is in registration order (built-ins first); honour
        # tryfirst/trylast like pluggy would when it calls the hook itself.
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        return sorted(impls, key=lambda i: 0 if i.tryfirst else 2 if i.trylast else 1)

    def _call_one(self, impl, hook_name: str, kwargs: dict[str, Any]) -> tuple[bool, Any]:
        try:
            args = {name: kwargs[name] for name in impl.argnames}
            return True, impl.function(**args)
        except Exception as exc:  # noqa: BLE001 - isolate every plugin
            self.record_failure(impl.plugin_name, hook_name, exc)
            return False, None

    def call_each_named(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation in isolation; return (plugin name, result) pairs."""
        results = []
        for impl in self._implementations(hook_name):
            ok, result = self._call_one(impl, hook_name, kwargs)
            if ok and result is not None:
                results.append((impl.plugin_name, result))
        return results

    def call_each_reporting(
        self, hook_name: str, **kwargs: Any
    ) -> tuple[list[tuple[str, Any]], list[str]]:
        """Like :meth:`call_each_named`, also naming the plugins that raised.

        For hooks whose contract turns a failure into a safe answer (for
        instance ``retention_holds``: a failure holds everything).
        """
        results, failed = [], []
        for impl in self._implementations(hook_name):
            ok, result = self._call_one(impl, hook_name, kwargs)
            if not ok:
                failed.append(impl.plugin_name)
            elif result is not None:
                results.append((impl.plugin_name, result))
        return results, failed

    def call_each(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation in isolation; return the non-None results."""
        return [result for _, result in self.call_each_named(hook_name, **kwargs)]

    def call_first(self, hook_name: str, **kwargs: Any) -> Any:
        """Return the first non-None result, isolating failures (treated as None)."""
        for impl in self._implementations(hook_name):
            ok, result = self._call_one(impl, hook_name, kwargs)
            if ok and result is not None:
                return result
        return None

    def call_first_strict(self, hook_name: str, **kwargs: Any) -> Any:
        """Return the first non-None result; an exception propagates (``deliver_mail``)."""
        for impl in self._implementations(hook_name):
            result = impl.function(**{name: kwargs[name] for name in impl.argnames})
            if result is not None:
                return result
        return None

    def call_chain(self, hook_name: str, value: Any, arg: str, **kwargs: Any) -> Any:
        """Pass ``value`` through every implementation; exceptions propagate."""
        for impl in self._implementations(hook_name):
            args = {name: (value if name == arg else kwargs[name]) for name in impl.argnames}
            result = impl.function(**args)
            if result is not None:
                value = result
        return value

    def has_implementations(self, hook_name: str) -> bool:
        return bool(getattr(self.pm.hook, hook_name).get_hookimpls())

    def event_wanted(self, hook_name: str, pacs: Any) -> bool:
        """Some plugin implementing ``hook_name`` wants its calls now: one that does not
        implement ``event_wanted``, or whose ``event_wanted`` does not say ``False``."""
        askers = {impl.plugin: impl for impl in self.pm.hook.event_wanted.get_hookimpls()}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            ask = askers.get(impl.plugin)
            if ask is None:
                return True
            ok, wanted = self._call_one(ask, "event_wanted", {"pacs": pacs, "hook": hook_name})
            if not ok or wanted is not False:
                return True
        return False

    def settings_schema(self, plugin_name: str):
        plugin = self.pm.get_plugin(plugin_name)
        if plugin is None:
            return None
        impl = getattr(plugin, "settings_schema", None)
        if impl is None:
            return None
        try:
            return impl()
        except Exception as exc:  # noqa: BLE001
            self.record_failure(plugin_name, "settings_schema", exc)
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
