"""Helpers for the console and API tests: accounts, a CSRF-aware test client, stored studies."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from pacscore.db import connection, utcnow
from pacscore.models import User
from pacscore.users import hash_password
from pacscore.web import create_app
from tests.dicomgen import dataset_bytes, make_instance

PASSWORD = "correct-horse-battery"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def add_user(login: str, profile: str, services: list[str] | None = None, **fields) -> User:
    with connection():
        return User.create(
            login=login,
            profile=profile,
            password_hash=hash_password(fields.pop("password", PASSWORD)),
            services=json.dumps(services or []),
            **{"password_changed": utcnow(), **fields},
        )


def store_instance(pacs, folder: Path, **attributes) -> str:
    """Store one generated CT instance through the archive; return its study UID."""
    path = make_instance(folder, **attributes)
    with connection():
        result = pacs.archive.store(dataset_bytes(path), ExplicitVRLittleEndian, "TEST")
    assert result.ok, result
    return result.instance.study_uid


class Console:
    """A Flask test client that logs in like a browser and sends CSRF tokens."""

    def __init__(self, app) -> None:
        self.app = app
        self.client = app.test_client()

    def csrf(self) -> str:
        with self.client.session_transaction() as session:
            token = session.get("csrf")
        if token is None:
            match = CSRF_INPUT.search(self.client.get("/login").text)
            token = match.group(1)
        return token

    def login(self, login: str, password: str = PASSWORD):
        return self.client.post(
            "/login", data={"login": login, "password": password, "csrf_token": self.csrf()}
        )

    def get(self, path: str, **kwargs):
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict | None = None, **kwargs):
        return self.client.post(path, data={**(data or {}), "csrf_token": self.csrf()}, **kwargs)

    def api(self, method: str, path: str, **kwargs):
        headers = {"X-CSRF-Token": self.csrf(), **kwargs.pop("headers", {})}
        return self.client.open(path, method=method, headers=headers, **kwargs)


def basic(login: str, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{login}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def web_app(pacs):
    return create_app(pacs, {"TESTING": False})
