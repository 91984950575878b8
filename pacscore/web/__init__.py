"""The HTTP side: Flask application factory (the console and API grow here)."""

from __future__ import annotations

from flask import Flask, jsonify

from pacscore.models import db


def create_app(pacs, test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=pacs.config.secret_key, MAX_CONTENT_LENGTH=64 * 1024 * 1024)
    if test_config:
        app.config.update(test_config)
    app.extensions["pacs"] = pacs

    # one database connection per request, returned to the pool afterwards
    @app.before_request
    def open_database():
        db.connect(reuse_if_open=True)

    @app.teardown_request
    def close_database(exc):
        if not db.is_closed():
            db.close()

    @app.get("/api/v1/health")
    def health():
        return jsonify(status="ok", aet=pacs.config.aet)

    # a failing plugin is recorded by the host; the application starts without its pages
    pacs.hooks.call_each("register_blueprints", pacs=pacs, app=app)
    return app
