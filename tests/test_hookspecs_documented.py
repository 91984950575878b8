"""The hook contracts are documented, and the plugin host keeps them.

Every hookspec has a docstring saying when it fires and what an exception
does, and appears in the hook table of docs/plugin-guide.md (and the table
names no hook that does not exist).  The rest checks, in-process on fresh
:class:`PluginHost` objects, the isolation promises that the guide makes.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

from pacscore import hookimpl, hookspecs
from pacscore.plugins import PluginHost

PLUGIN_GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugin-guide.md"


def hookspec_functions() -> dict[str, object]:
    return {
        name: func
        for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(func, "pacscore_spec")
    }


HOOKS = sorted(hookspec_functions())


def guide_table_hooks() -> list[str]:
    """Hook names in the first column of the guide's hook table(s)."""
    return re.findall(r"^\|\s*`([a-z_]+)`\s*\|", PLUGIN_GUIDE.read_text(), re.MULTILINE)


def test_hookspecs_are_found():
    assert {"on_store", "filter_store", "settings_schema", "periodic_tasks"} <= set(HOOKS)
    # and they are exactly what the plugin manager knows
    host = PluginHost()
    assert set(HOOKS) == {name for name in dir(host.pm.hook) if not name.startswith("_")}


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_docstring_says_when_it_fires_and_what_an_exception_does(name):
    doc = inspect.getdoc(hookspec_functions()[name]) or ""
    assert len(doc) > 80, f"{name} has no real docstring"
    assert re.search(r"\b(fires|called)\b", doc, re.IGNORECASE), f"{name}: when does it fire?"
    assert re.search(r"exception|raise", doc, re.IGNORECASE), f"{name}: what if it raises?"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_in_the_plugin_guide_table(name):
    assert name in guide_table_hooks(), f"add a row for `{name}` to {PLUGIN_GUIDE.name}"


def test_plugin_guide_table_names_only_existing_hooks():
    documented = guide_table_hooks()
    assert sorted(set(documented)) == sorted(documented), "a hook is listed twice"
    assert set(documented) <= set(HOOKS), set(documented) - set(HOOKS)


# -- PluginHost behaviour, in-process ----------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    @hookimpl
    def on_alert(self, kind, message):
        self.calls.append((kind, message))


class Raising:
    @hookimpl
    def on_alert(self, kind):
        raise RuntimeError(f"cannot handle {kind}")


class Answer:
    def __init__(self, value) -> None:
        self.value = value

    @hookimpl
    def authenticate(self, login):
        return self.value


@pytest.fixture
def host():
    recorded = []
    plugin_host = PluginHost(on_failure=recorded.append)
    plugin_host.persisted = recorded
    return plugin_host


def alert(host: PluginHost, kind: str = "storage_full") -> list:
    return host.call_each("on_alert", pacs=None, kind=kind, message="m", details={})


def test_a_raising_implementation_does_not_stop_the_others(host):
    before, after = Recorder(), Recorder()
    host.register(before, name="before")
    host.register(Raising(), name="raising")
    host.register(after, name="after")
    assert alert(host) == []
    assert before.calls == after.calls == [("storage_full", "m")]


def test_failures_are_recorded_with_plugin_and_hook(host):
    host.register(Raising(), name="raising")
    alert(host, "low_disk_space")
    assert [(f.plugin, f.hook) for f in host.failures] == [("raising", "on_alert")]
    assert host.failures[0].error == "RuntimeError: cannot handle low_disk_space"
    assert host.persisted == host.failures  # forwarded to the application's recorder


def test_a_failing_failure_recorder_does_not_break_the_call():
    def broken_recorder(failure):
        raise OSError("database down")

    host = PluginHost(on_failure=broken_recorder)
    recorder = Recorder()
    host.register(Raising(), name="raising")
    host.register(recorder, name="recorder")
    alert(host)
    assert recorder.calls and len(host.failures) == 1


class Schema:
    def __init__(self, value) -> None:
        self.value = value

    @hookimpl
    def settings_schema(self):
        return self.value


class Suffix:
    def __init__(self, suffix) -> None:
        self.suffix = suffix

    @hookimpl
    def prepare_mail(self, message):
        return None if self.suffix is None else message + self.suffix


def test_call_each_returns_the_non_none_results(host):
    for name, value in (("a", 1), ("b", None), ("c", 3)):
        host.register(Schema(value), name=name)
    assert sorted(host.call_each("settings_schema")) == [1, 3]
    assert sorted(host.call_each_named("settings_schema")) == [("a", 1), ("c", 3)]


def test_call_first_returns_the_first_non_none_result(host):
    host.register(Answer(None), name="undecided")
    host.register(Answer({"accepted": True, "method": "ldap"}), name="ldap")
    host.register(Answer(None), name="also-undecided")
    assert host.call_first("authenticate", pacs=None, login="u", password="p") == {
        "accepted": True,
        "method": "ldap",
    }
    host = PluginHost()
    host.register(Answer(None), name="undecided")
    assert host.call_first("authenticate", pacs=None, login="u", password="p") is None


def test_call_first_treats_a_raising_implementation_as_none(host):
    class Broken:
        @hookimpl
        def authenticate(self):
            raise ValueError("ldap down")

    host.register(Broken(), name="broken")
    host.register(Answer(None), name="undecided")
    assert host.call_first("authenticate", pacs=None, login="u", password="p") is None
    assert [(f.plugin, f.hook) for f in host.failures] == [("broken", "authenticate")]

    host.register(Answer({"accepted": True, "method": "local"}), name="fallback")
    assert host.call_first("authenticate", pacs=None, login="u", password="p") == {
        "accepted": True,
        "method": "local",
    }


def test_call_chain_passes_the_value_along_and_lets_exceptions_through(host):
    host.register(Suffix("-a"), name="a")
    host.register(Suffix(None), name="unchanged")
    host.register(Suffix("-a"), name="again")
    assert host.call_chain("prepare_mail", "mail", "message", pacs=None) == "mail-a-a"

    class Refuses:
        @hookimpl
        def prepare_mail(self):
            raise PermissionError("no clear-text mail")

    host.register(Refuses(), name="refuses")
    with pytest.raises(PermissionError):
        host.call_chain("prepare_mail", "mail", "message", pacs=None)


def test_implementations_are_called_in_registration_order(host):
    """What pacscore/plugins.py and the prepare_mail contract promise."""
    host.register(Schema(1), name="first")
    host.register(Schema(2), name="second")
    assert host.call_each("settings_schema") == [1, 2]
    host.register(Answer("first"), name="answers-first")
    host.register(Answer("second"), name="answers-second")
    assert host.call_first("authenticate", pacs=None, login="u", password="p") == "first"
    host.register(Suffix("-a"), name="a")
    host.register(Suffix("-b"), name="b")
    assert host.call_chain("prepare_mail", "mail", "message", pacs=None) == "mail-a-b"


def test_a_failing_settings_schema_is_recorded_and_gives_none(host):
    class BadSchema:
        @hookimpl
        def settings_schema(self):
            raise ImportError("marshmallow too old")

    host.register(BadSchema(), name="bad")
    assert host.settings_schema("bad") is None
    assert host.settings_schema("not-installed") is None
    assert [(f.plugin, f.hook) for f in host.failures] == [("bad", "settings_schema")]


def test_an_argument_the_hook_does_not_have_is_refused_at_registration(host):
    class Misspelt:
        @hookimpl
        def on_store(self, pacs, instanse):
            pass

    with pytest.raises(pluggy.PluginValidationError):
        host.register(Misspelt(), name="misspelt")


def test_registered_objects_are_listed_as_local_plugins(host):
    host.register(Recorder(), name="mine")
    [info] = host.list()
    assert (info.name, info.version, info.state) == ("mine", "local", "loaded")
    assert host.has_implementations("on_alert")
    assert not host.has_implementations("on_store")


# -- the worked example of the guide is the example distribution ----------------------------


@pytest.mark.parametrize("relpath", ["pyproject.toml", "setup.cfg", "pacscore_hello/__init__.py"])
def test_worked_example_in_the_guide_is_the_example_plugin(relpath):
    guide = PLUGIN_GUIDE.read_text()
    match = re.search(rf"`{re.escape(relpath)}`[^\n]*:\n\n```\w*\n(.*?)```", guide, re.DOTALL)
    assert match, f"no code block for {relpath} in the worked example"
    source = (PLUGIN_GUIDE.parent / "example-plugin" / relpath).read_text()
    assert source.endswith(match.group(1)), f"the guide's {relpath} differs from the file"
