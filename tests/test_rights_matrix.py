"""Every route (console and API) times every default profile: allowed, or refused.

The table is the URL map itself, so a route added without a declared right
fails here, and a plugin's undeclared page is refused to everyone.
"""

from __future__ import annotations

import json

import pytest
from flask import Blueprint
from werkzeug.routing import IntegerConverter

from pacscore import hookimpl
from pacscore.config import CORE_SETTINGS
from pacscore.db import connection
from pacscore.models import Profile
from pacscore.rights import DEFAULT_PROFILES
from pacscore.web.security import AUTHENTICATED, PUBLIC, endpoint_right, require_right
from tests.webclient import Console, add_user, web_app


class PagesPlugin:
    """A plugin contributing one declared and one undeclared page."""

    @hookimpl
    def register_blueprints(self, app):
        bp = Blueprint("extra", __name__, url_prefix="/extra")

        @bp.get("/declared")
        @require_right("manage_worklist")
        def declared():
            return "declared page"

        @bp.get("/forgotten")
        def forgotten():
            return "must never be served"

        app.register_blueprint(bp)


# The reviewed table: which right each endpoint needs.  A new route fails
# test_every_route_declares_the_expected_right until it is added here.
EXPECTED_BY_RIGHT = {
    PUBLIC: [
        "api.health", "api.openapi", "auth.home", "auth.login", "reset.forgot", "reset.reset",
    ],
    AUTHENTICATED: [
        "auth.account", "auth.change_password", "auth.create_token", "auth.logout",
        "auth.revoke_token",
    ],
    "view_studies": ["api.instances", "api.studies", "api.study", "studies.search", "studies.view"],
    "download": [
        "api.download_series", "api.download_study", "studies.download",
        "studies.download_series",
    ],
    "delete": ["api.delete_series", "api.delete_study", "studies.delete"],
    "send": ["api.send_study", "studies.send"],
    "manage_nodes": [
        "api.create_node", "api.delete_node", "api.echo_node", "api.node", "api.nodes",
        "api.update_node", "nodes.create", "nodes.delete", "nodes.echo_page", "nodes.edit",
        "nodes.index",
    ],
    "manage_storages": [
        "api.create_storage", "api.delete_storage", "api.storages", "api.update_storage",
        "storages.create", "storages.delete", "storages.edit", "storages.index",
    ],
    "manage_users": [
        "api.create_profile", "api.create_user", "api.delete_profile", "api.delete_user",
        "api.profiles", "api.unlock_user", "api.update_profile", "api.update_user", "api.user",
        "api.users", "users.create", "users.create_profile", "users.delete",
        "users.delete_profile_page", "users.edit", "users.index", "users.profiles",
        "users.send_reset_link", "users.unlock_user",
        "service_filters.create", "service_filters.delete", "service_filters.edit",
        "service_filters.index", "service_filters_api.api_create",
        "service_filters_api.api_delete", "service_filters_api.api_get",
        "service_filters_api.api_list", "service_filters_api.api_update",
    ],
    "manage_plugins": [
        "api.plugin_settings", "api.plugins", "api.update_plugin", "api.update_plugin_settings",
        "plugins.disable", "plugins.enable", "plugins.index", "plugins.settings",
    ],
    "configure": ["api.settings", "api.update_settings", "logs.set_level", "settings.index"],
    "view_audit": ["api.audit", "audit.index", "logs.download", "logs.index"],
    "manage_jobs": [
        "api.delete_job", "api.jobs", "api.retry_job", "jobs.delete", "jobs.index", "jobs.retry",
    ],
    "manage_worklist": [
        "worklist.clear", "worklist.create", "worklist.create_study_type", "worklist.delete",
        "worklist.delete_step", "worklist.delete_study_type", "worklist.edit",
        "worklist.edit_study_type",
        "worklist.index", "worklist.reset_step", "worklist.study_types",
        "worklist_api.api_clear", "worklist_api.api_create", "worklist_api.api_create_study_type",
        "worklist_api.api_delete", "worklist_api.api_delete_step",
        "worklist_api.api_delete_study_type", "worklist_api.api_entry",
        "worklist_api.api_reset_step", "worklist_api.api_search", "worklist_api.api_study_types",
        "worklist_api.api_update", "worklist_api.api_update_study_type",
        # the test plugin's page
        "extra.declared",
    ],
    None: ["extra.forgotten"],
}  # fmt: skip
EXPECTED = {endpoint: right for right, names in EXPECTED_BY_RIGHT.items() for endpoint in names}


SAMPLE = {"uid": "1.2.3.999", "series_uid": "1.2.3.998", "name": "no-such-name"}


def routes(app):
    """(endpoint, method, url) for every rule, path parameters filled with absent ids."""
    adapter = app.url_map.bind("localhost")
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        if rule.endpoint == "static":
            continue
        values = {
            name: 999999 if isinstance(conv, IntegerConverter) else SAMPLE.get(name, "x")
            for name, conv in rule._converters.items()
        }
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, adapter.build(rule.endpoint, values, method=method)


def refused(response, api: bool) -> bool:
    if api:
        return response.status_code in (401, 403)
    login = response.status_code == 302 and "/login" in response.headers.get("Location", "")
    return response.status_code == 403 or login


@pytest.fixture
def db_url():
    """SQLite only: rights are decided before any query (the other web tests run on both)."""
    return "sqlite:///index.db"


@pytest.fixture
def app(make_pacs):
    pacs = make_pacs(PagesPlugin())
    return web_app(pacs)


def test_every_route_declares_the_expected_right(app):
    declared = {e: endpoint_right(app, e) for e, _, _ in routes(app)}
    assert declared == EXPECTED


def restore(pacs, profiles, settings):
    """Undo what an allowed request changed (rights matrix form, settings form)."""
    with connection():
        for profile_id, rights in profiles:
            Profile.update(rights=rights).where(Profile.id == profile_id).execute()
        pacs.settings.update_core(settings)


@pytest.mark.parametrize("profile", list(DEFAULT_PROFILES))
def test_profile_against_every_route(app, profile):
    pacs = app.extensions["pacs"]
    rights = set(DEFAULT_PROFILES[profile])
    add_user("someone", profile)
    with connection():
        profiles = [(p.id, p.rights) for p in Profile.select()]
        settings = CORE_SETTINGS.dump(pacs.settings.core)
    console = Console(app)
    assert console.login("someone").status_code == 302
    failures = []
    for endpoint, method, url in routes(app):
        right = EXPECTED[endpoint]
        api = url.startswith("/api/")
        if endpoint == "auth.logout":
            continue  # checked last: it ends the session
        if api:
            response = console.api(method, url)
        elif method == "GET":
            response = console.get(url)
        else:
            response = console.post(url)
        restore(pacs, profiles, settings)
        allowed = right in (PUBLIC, AUTHENTICATED) or right in rights
        if allowed == refused(response, api) or response.status_code >= 500:
            failures.append(f"{method} {url} ({right}): {response.status_code}")
    assert not failures, f"{profile}: " + "; ".join(failures)
    assert console.post("/logout").status_code == 302
    assert refused(console.get("/account"), api=False)


def test_anonymous_gets_login_or_401(app):
    console = Console(app)
    failures = []
    for endpoint, method, url in routes(app):
        right = EXPECTED[endpoint]
        api = url.startswith("/api/")
        response = console.api(method, url) if api else (
            console.get(url) if method == "GET" else console.post(url)
        )  # fmt: skip
        if right == PUBLIC:
            ok = not refused(response, api) or endpoint == "auth.home"
        else:
            ok = response.status_code == 401 if api else refused(response, api=False)
        if not ok:
            failures.append(f"{method} {url}: {response.status_code}")
    assert not failures


def test_plugin_pages_follow_their_declaration(app):
    add_user("clerk", "secretary")
    add_user("viewer", "simple user")
    clerk, viewer = Console(app), Console(app)
    clerk.login("clerk")
    viewer.login("viewer")
    assert clerk.get("/extra/declared").text == "declared page"
    assert viewer.get("/extra/declared").status_code == 403
    for console in (clerk, viewer):
        assert console.get("/extra/forgotten").status_code == 403


def test_rights_follow_profile_edits(app):
    add_user("viewer", "simple user")
    console = Console(app)
    console.login("viewer")
    assert console.get("/nodes/").status_code == 403
    with connection():
        Profile.update(rights=json.dumps(["view_studies", "manage_nodes"])).where(
            Profile.name == "simple user"
        ).execute()
    assert console.get("/nodes/").status_code == 200


class MenuPlugin:
    """A plugin page with a menu entry, for users holding ``manage_worklist``."""

    @hookimpl
    def register_blueprints(self, app):
        from pacscore.web.menu import add_menu_item

        bp = Blueprint("menu_extra", __name__, url_prefix="/menu-extra")

        @bp.get("/")
        @require_right("manage_worklist")
        def index():
            return "extra page"

        app.register_blueprint(bp)
        add_menu_item(app, "Extra page", "menu_extra.index", "manage_worklist")


def test_plugin_menu_entries_show_to_the_users_holding_their_right(make_pacs):
    app = web_app(make_pacs(MenuPlugin()))
    add_user("sec", "secretary")
    add_user("ref", "referring")
    secretary, referring = Console(app), Console(app)
    secretary.login("sec")
    referring.login("ref")
    assert 'href="/menu-extra/">Extra page</a>' in secretary.get("/account").text
    assert "Extra page" not in referring.get("/account").text
    assert referring.get("/menu-extra/").status_code == 403
