"""Secrets at rest: passwords of SMTP servers, LDAP service accounts, private keys.

Values are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under a key kept
in the home folder (``secret.key``, mode 0600), created on first use.  A copy
of the database alone therefore reveals no secret.  Plugins use
``pacs.secrets.encrypt(text)`` before storing and ``pacs.secrets.decrypt``
when they need the value; encrypted values start with ``enc:``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "enc:"
KEY_FILE = "secret.key"


class SecretError(Exception):
    """A stored secret cannot be decrypted (wrong or missing key file)."""


class SecretBox:
    def __init__(self, home: Path) -> None:
        self._path = Path(home) / KEY_FILE
        self._fernet: Fernet | None = None

    def _key(self) -> Fernet:
        if self._fernet is None:
            if not self._path.exists():
                self._create_key()
            self._fernet = Fernet(self._path.read_bytes().strip())
        return self._fernet

    def _create_key(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting together never overwrite each other's key
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "wb") as out:
            out.write(Fernet.generate_key())
            out.flush()
            os.fsync(out.fileno())

    def encrypt(self, value: str | bytes) -> str:
        """Encrypt ``value``; an empty value stays empty (nothing to hide)."""
        if not value:
            return ""
        data = value.encode() if isinstance(value, str) else value
        return PREFIX + self._key().encrypt(data).decode()

    def decrypt_bytes(self, stored: str) -> bytes:
        if not stored:
            return b""
        if not is_encrypted(stored):
            raise SecretError("value is not encrypted")
        try:
            return self._key().decrypt(stored[len(PREFIX) :].encode())
        except InvalidToken as exc:
            raise SecretError(f"cannot decrypt a secret with {self._path.name}") from exc

    def decrypt(self, stored: str) -> str:
        return self.decrypt_bytes(stored).decode()


def is_encrypted(value: str) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)
