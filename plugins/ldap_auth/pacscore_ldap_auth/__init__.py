"""pacscore-ldap-auth: console and API login against LDAP / Active Directory.

Implements ``authenticate``: the directory checks the password, the user's
groups give the profile (ordered rules, first match wins) and the services;
the core then creates or updates the local copy of the account, managed by
LDAP (no local password).  ``test_connection(pacs)`` and
``test_login(pacs, login, password)`` are the settings page's checks.
"""

from __future__ import annotations

from pacscore import hookimpl
from pacscore_ldap_auth import login as _login
from pacscore_ldap_auth.login import CheckResult, test_connection, test_login
from pacscore_ldap_auth.pages import make_blueprint
from pacscore_ldap_auth.settings import LdapSettings

# plain functions for the settings page, not pytest tests despite their names
test_connection.__test__ = False
test_login.__test__ = False

__all__ = ["CheckResult", "LdapSettings", "test_connection", "test_login"]


@hookimpl
def settings_schema():
    return LdapSettings()


@hookimpl
def authenticate(pacs, login, password):
    return _login.authenticate(pacs, login, password)


@hookimpl
def register_blueprints(pacs, app):
    from pacscore.web.menu import add_menu_item
    from pacscore_ldap_auth.pages import RIGHT

    app.register_blueprint(make_blueprint())
    add_menu_item(app, "LDAP", "ldap_auth.index", RIGHT)
