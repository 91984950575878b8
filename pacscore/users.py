"""Local accounts: password hashing (scrypt) and the first administrator."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from pacscore.models import User

# scrypt cost parameters (RFC 7914 recommends N >= 2**14 for interactive logins)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
ADMIN_PROFILE = "system administrator"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    encode = base64.b64encode
    return (
        f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(computed, base64.b64decode(digest))


def ensure_admin(password: str, login: str = "admin") -> User:
    """Create the first administrator, or reset its password (idempotent init)."""
    user, _ = User.get_or_create(login=login, defaults={"profile": ADMIN_PROFILE})
    user.password_hash = hash_password(password)
    user.profile = ADMIN_PROFILE
    user.status = "active"
    user.save()
    return user
