"""The hook contracts are documented, and the plugin host keeps them.

Every hookspec declares its calling convention and has a docstring saying
when it fires and what an exception does, and appears, with its convention,
in the hook table of docs/plugin-guide.md (and the table names no hook that
does not exist).  The rest checks, in-process on fresh :class:`PluginHost`
objects, that the host applies each convention and the isolation promises
that the guide makes.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

from pacscore import hookimpl, hookspecs
from pacscore.hookspecs import Calling
from pacscore.plugins import PluginHost

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_GUIDE = ROOT / "docs" / "plugin-guide.md"


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


def guide_table_callings() -> dict[str, str]:
    """Hook name -> the second column (its calling convention) of the guide's hook table."""
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|\s*`([^`|]+)`\s*\|", PLUGIN_GUIDE.read_text(), re.M)
    return dict(rows)


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


@pytest.mark.parametrize("name", HOOKS)
def test_hook_declares_its_calling_convention_and_its_docstring_states_it(name):
    spec = hookspecs_functions_calling(name)
    assert isinstance(spec, Calling), f"declare {name} with @hookspec(EACH) or another convention"
    doc = " ".join(inspect.getdoc(hookspec_functions()[name]).split())
    stated = " ".join(f"Calling convention {spec}: {spec.describe()}".split())
    assert doc.endswith(stated), f"{name}: the docstring must end with its convention"
    # pluggy's own firstresult agrees, for anyone reading the spec with pluggy's eyes
    assert hookspec_functions()[name].pacscore_spec["firstresult"] == spec.firstresult


@pytest.mark.parametrize("name", HOOKS)
def test_the_guide_table_states_the_declared_calling_convention(name):
    assert guide_table_callings().get(name) == str(hookspecs_functions_calling(name)), (
        f"the second column of `{name}` in {PLUGIN_GUIDE.name}"
    )


def hookspecs_functions_calling(name: str) -> Calling | None:
    return getattr(hookspec_functions()[name], "pacscore_calling", None)


def test_a_hookspec_without_a_calling_convention_is_refused():
    def on_something(pacs):
        """A hook someone forgot to give a convention."""

    with pytest.raises(TypeError, match=r"calling convention, e\.g\. @hookspec\(EACH\)"):
        hookspecs.hookspec(on_something)  # a bare @hookspec
    with pytest.raises(TypeError):
        hookspecs.hookspec(firstresult=True)  # pluggy's way: the convention says it


def test_no_call_site_chooses_a_convention():
    """Only the plugin host walks a hook's implementations; everyone else calls
    ``pacs.hooks.relay.<hook>(...)`` / ``pacs.hooks.call(name, ...)``."""
    offenders = []
    for folder in ("pacscore", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "pacscore" / "plugins.py":
                continue
            source = path.read_text()
            for pattern in ("get_hookimpls", ".pm.hook", "impl.function"):
                if pattern in source:
                    offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert offenders == []


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
    return host.relay.on_alert(pacs=None, kind=kind, message="m", details={})


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


def authenticate(host: PluginHost):
    return host.relay.authenticate(pacs=None, login="u", password="p")


def prepare(host: PluginHost, message: str = "mail"):
    return host.relay.prepare_mail(pacs=None, message=message)


def test_each_returns_the_plugins_non_none_results(host):
    for name, value in (("a", 1), ("b", None), ("c", 3)):
        host.register(Schema(value), name=name)
    assert host.relay.settings_schema() == [("a", 1), ("c", 3)]
    assert host.call("settings_schema") == [("a", 1), ("c", 3)]  # the same, named at run time
    assert host.call_plugin("c", "settings_schema") == [("c", 3)]
    assert host.settings_schema("c") == 3 and host.settings_schema("b") is None


def test_first_returns_the_first_non_none_result(host):
    host.register(Answer(None), name="undecided")
    host.register(Answer({"accepted": True, "method": "ldap"}), name="ldap")
    host.register(Answer(None), name="also-undecided")
    assert authenticate(host) == {"accepted": True, "method": "ldap"}
    host = PluginHost()
    host.register(Answer(None), name="undecided")
    assert authenticate(host) is None


def test_first_treats_a_raising_implementation_as_none(host):
    class Broken:
        @hookimpl
        def authenticate(self):
            raise ValueError("ldap down")

    host.register(Broken(), name="broken")
    host.register(Answer(None), name="undecided")
    assert authenticate(host) is None
    assert [(f.plugin, f.hook) for f in host.failures] == [("broken", "authenticate")]

    host.register(Answer({"accepted": True, "method": "local"}), name="fallback")
    assert authenticate(host) == {"accepted": True, "method": "local"}


def test_a_refusing_filter_store_stops_the_others(host):
    asked = []

    class Filter:
        def __init__(self, name, answer) -> None:
            self.name, self.answer = name, answer

        @hookimpl
        def filter_store(self, instance):
            asked.append(self.name)
            if self.answer == "raise":
                raise RuntimeError("bug")
            return self.answer

    for name, answer in (("accepts", None), ("buggy", "raise"), ("refuses", "no"), ("late", "x")):
        host.register(Filter(name, answer), name=name)
    assert host.relay.filter_store(pacs=None, instance=object()) == "no"
    assert asked == ["accepts", "buggy", "refuses"]
    assert [f.plugin for f in host.failures] == ["buggy"]


def test_chain_passes_the_value_along_and_lets_exceptions_through(host):
    host.register(Suffix("-a"), name="a")
    host.register(Suffix(None), name="unchanged")
    host.register(Suffix("-a"), name="again")
    assert prepare(host) == "mail-a-a"

    class Refuses:
        @hookimpl
        def prepare_mail(self):
            raise PermissionError("no clear-text mail")

    host.register(Refuses(), name="refuses")
    with pytest.raises(PermissionError):
        prepare(host)


def test_first_strict_lets_exceptions_through(host):
    class Deliverer:
        def __init__(self, answer) -> None:
            self.answer, self.calls = answer, 0

        @hookimpl
        def deliver_mail(self, message):
            self.calls += 1
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    assert host.relay.deliver_mail(pacs=None, message="m") is None  # nobody delivers
    not_mine, smtp, never = Deliverer(None), Deliverer(True), Deliverer(True)
    for name, plugin in (("not_mine", not_mine), ("smtp", smtp), ("never", never)):
        host.register(plugin, name=name)
    assert host.relay.deliver_mail(pacs=None, message="m") is True
    assert (not_mine.calls, smtp.calls, never.calls) == (1, 1, 0)
    smtp.answer = ConnectionRefusedError("smtp down")
    with pytest.raises(ConnectionRefusedError):
        host.relay.deliver_mail(pacs=None, message="m")
    assert host.failures == []  # the caller's to handle (the mail job is retried)


def test_each_reporting_names_the_plugins_that_raised(host):
    class Holds:
        def __init__(self, answer) -> None:
            self.answer = answer

        @hookimpl
        def retention_holds(self, study_uids):
            if self.answer == "raise":
                raise OSError("cannot tell")
            return self.answer

    host.register(Holds({"1": "pending"}), name="router")
    host.register(Holds("raise"), name="broken")
    host.register(Holds(None), name="indifferent")
    answers, failed = host.relay.retention_holds(pacs=None, study_uids=["1", "2"])
    assert answers == [("router", {"1": "pending"})]
    assert failed == ["broken"]
    assert [(f.plugin, f.hook) for f in host.failures] == [("broken", "retention_holds")]


def test_implementations_are_called_in_registration_order(host):
    """What pacscore/plugins.py and the prepare_mail contract promise."""
    host.register(Schema(1), name="first")
    host.register(Schema(2), name="second")
    assert host.relay.settings_schema() == [("first", 1), ("second", 2)]
    host.register(Answer("first"), name="answers-first")
    host.register(Answer("second"), name="answers-second")
    assert authenticate(host) == "first"
    host.register(Suffix("-a"), name="a")
    host.register(Suffix("-b"), name="b")
    assert prepare(host) == "mail-a-b"


def test_tryfirst_and_trylast_are_honoured(host):
    class Early(Schema):
        @hookimpl(tryfirst=True)
        def settings_schema(self):
            return self.value

    class Late(Schema):
        @hookimpl(trylast=True)
        def settings_schema(self):
            return self.value

    host.register(Late("late"), name="late")
    host.register(Schema("plain"), name="plain")
    host.register(Early("early"), name="early")
    assert [value for _, value in host.relay.settings_schema()] == ["early", "plain", "late"]


def test_hooks_follow_plugins_registered_and_unregistered_after_a_call(host):
    """Each hook resolves its implementations once, not per call: a plugin
    registered or unregistered later (the console's switch, ``follow``) must
    still be seen at the next call."""
    first, second = Recorder(), Recorder()
    host.register(first, name="first")
    alert(host)
    assert host.wanted("on_alert", None)
    host.register(second, name="second")
    alert(host)
    assert (len(first.calls), len(second.calls)) == (2, 1)
    host.pm.unregister(name="first")
    alert(host)
    assert (len(first.calls), len(second.calls)) == (2, 2)
    assert host.plugins_implementing("on_alert") == ["second"]
    host.pm.unregister(name="second")
    assert alert(host) == [] and not host.has_implementations("on_alert")
    assert not host.wanted("on_alert", None)


def test_wanted_asks_each_implementing_plugin_and_follows_new_ones(host):
    class Choosy(Recorder):
        def __init__(self, answer) -> None:
            super().__init__()
            self.answer = answer

        @hookimpl
        def event_wanted(self, hook):
            if self.answer == "raise":
                raise RuntimeError("cannot tell")
            return self.answer

    choosy = Choosy(False)
    host.register(choosy, name="choosy")
    assert not host.wanted("on_alert", None)  # the only implementation does not want it
    choosy.answer = None
    assert host.wanted("on_alert", None)
    choosy.answer = "raise"  # an error counts as wanted, and is recorded
    assert host.wanted("on_alert", None)
    assert [(f.plugin, f.hook) for f in host.failures] == [("choosy", "event_wanted")]
    choosy.answer = False
    assert not host.wanted("on_alert", None)
    host.register(Recorder(), name="plain")  # wants every event: it has no event_wanted
    assert host.wanted("on_alert", None)


def test_an_unknown_hook_name_is_refused(host):
    with pytest.raises(KeyError, match="no hook named 'on_stor'"):
        host.call("on_stor", pacs=None)
    with pytest.raises(AttributeError, match="no hook named 'on_stor'"):
        host.relay.on_stor  # noqa: B018


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
