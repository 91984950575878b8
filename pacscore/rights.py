"""Rights and the default profiles.

A right is a string; a profile (``models.Profile``) is a named set of them.
Every console page, API route and plugin blueprint declares the right it
needs; plugins may add rights of their own by using a new name (shown in the
rights matrix once a profile holds it).
"""

from __future__ import annotations

import json

from pacscore.models import Profile

RIGHTS: dict[str, str] = {
    "view_studies": "search and view studies",
    "download": "download studies and series",
    "delete": "delete studies and series",
    "send": "send studies to DICOM nodes",
    "manage_worklist": "add, edit and delete worklist entries",
    "manage_nodes": "declare and edit DICOM nodes",
    "manage_storages": "manage storage folders",
    "manage_users": "manage users and profiles",
    "manage_plugins": "enable, disable and configure plugins",
    "configure": "change settings",
    "view_audit": "view the audit trail and the log",
    "manage_jobs": "retry and delete background jobs",
}

ALL = list(RIGHTS)

DEFAULT_PROFILES: dict[str, list[str]] = {
    "system administrator": ALL,
    "medical administrator": [
        "view_studies", "download", "delete", "send", "manage_worklist", "view_audit",
        "manage_jobs",
    ],
    "radiologist": ["view_studies", "download", "send"],
    "referring": ["view_studies", "download"],
    "secretary": ["view_studies", "manage_worklist"],
    "technician": ["view_studies", "send", "manage_worklist"],
    "simple user": ["view_studies"],
}  # fmt: skip


def ensure_default_profiles() -> None:
    """Create the default profiles that are missing (an admin's edits are kept)."""
    for name, rights in DEFAULT_PROFILES.items():
        Profile.get_or_create(name=name, defaults={"rights": json.dumps(rights), "builtin": True})


def profile_rights(name: str) -> frozenset[str]:
    profile = Profile.get_or_none(Profile.name == name)
    return frozenset(json.loads(profile.rights)) if profile else frozenset()
