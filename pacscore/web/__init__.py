"""The HTTP side: the console (server-rendered pages) and the REST API.

``create_app`` is the factory: one blueprint per area, the rights check
before every request (:mod:`pacscore.web.security`), errors answered as a
page or as JSON (never a stack trace), plugins' blueprints last.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug import exceptions
from werkzeug.exceptions import HTTPException

from pacscore.db import db
from pacscore.services import Conflict, Invalid, NotFound, ServiceError
from pacscore.web import security
from pacscore.web.common import InvalidInput
from pacscore.web.converters import IdConverter
from pacscore.web.menu import menu_items

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def create_app(pacs, test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    # before any blueprint: every <int:...> of every route is a bounded id
    app.url_map.converters["int"] = IdConverter
    app.config.update(
        SECRET_KEY=pacs.config.secret_key,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="pacscore_session",
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["pacs"] = pacs

    # one database connection per request, returned to the pool afterwards
    @app.before_request
    def open_database():
        if request.endpoint == "api.health":
            # the health check takes its own connection, within a bounded time
            from pacscore.web.api import health_before_request

            return health_before_request()
        db.connect(reuse_if_open=True)

    app.before_request(security.check_request)

    @app.teardown_request
    def close_database(exc):
        if not db.is_closed():
            db.close()

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        # no inline script or style anywhere: injected markup cannot run
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    # globals, not a context processor: imported macros see them too
    app.jinja_env.globals.update(csrf_token=security.csrf_token, has_right=security.has_right)

    @app.context_processor
    def template_helpers():
        return {"current_user": security.current_user(), "plugin_menu": menu_items(app)}

    _register_error_handlers(app)
    _register_blueprints(app)
    # a failing plugin is recorded by the host; the application starts without its pages
    pacs.hooks.relay.register_blueprints(pacs=pacs, app=app)
    return app


def _register_blueprints(app: Flask) -> None:
    from pacscore.web import (
        api,
        audit,
        auth,
        jobs,
        logs,
        nodes,
        plugins,
        reset,
        service_filters,
        settings,
        storages,
        studies,
        users,
        worklist,
    )

    for module in (auth, studies, nodes, storages, plugins, users, settings, logs, audit, jobs):
        app.register_blueprint(module.bp)
    app.register_blueprint(reset.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(worklist.bp)
    app.register_blueprint(worklist.api)
    app.register_blueprint(service_filters.bp)
    app.register_blueprint(service_filters.api)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(InvalidInput)
    def invalid_input(exc: InvalidInput):
        if _wants_json():
            return jsonify(error="invalid input", errors=exc.errors), 400
        message = "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                            for k, v in exc.errors.items())  # fmt: skip
        return render_template("error.html", code=400, message=message), 400

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description or exc.name
        if _wants_json():
            response = jsonify(error=exc.name.lower(), message=message)
            response.status_code = exc.code or 500
            if exc.code == 401:
                response.headers["WWW-Authenticate"] = 'Basic realm="pacscore"'
            return response
        return render_template("error.html", code=exc.code, message=message), exc.code

    @app.errorhandler(ServiceError)
    def refused(exc: ServiceError):
        """The service layer's refusals, answered as the pages' abort() and InvalidInput were."""
        if isinstance(exc, Invalid):
            return invalid_input(InvalidInput(exc.errors))
        status = exceptions.BadRequest
        if isinstance(exc, NotFound | Conflict):
            status = exceptions.NotFound if isinstance(exc, NotFound) else exceptions.Conflict
        return http_error(status(str(exc)))

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("error answering %s %s", request.method, request.path)
        message = "internal error: the details are in the server log"
        if _wants_json():
            return jsonify(error="internal error", message=message), 500
        return render_template("error.html", code=500, message=message), 500
