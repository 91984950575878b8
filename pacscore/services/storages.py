"""Storage folders: look up, add (the folder too), change, delete an empty one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peewee import IntegrityError

from pacscore.models import Instance, Storage
from pacscore.services import Actor, Conflict, Invalid, NotFound, Taken, load, record
from pacscore.services.schemas import StorageSchema
from pacscore.storage import MB, free_bytes

if TYPE_CHECKING:
    from pacscore.app import Pacs

SCHEMA = StorageSchema()


def free_mb(storage: Storage) -> int | None:
    try:
        return free_bytes(Path(storage.path)) // MB
    except OSError:
        return None


def get(storage_id: int) -> Storage:
    storage = Storage.get_or_none(Storage.id == storage_id)
    if storage is None:
        raise NotFound("no such storage")
    return storage


def named(name: str) -> Storage:
    storage = Storage.get_or_none(Storage.name == name)
    if storage is None:
        raise NotFound(f"no storage named {name!r}")
    return storage


def listed() -> list[Storage]:
    """In the order stores fill them."""
    return list(Storage.select().order_by(Storage.position, Storage.id))


def save(
    pacs: Pacs,
    storage: Storage | None,
    data: Mapping[str, Any],
    actor: Actor | None = None,
    partial: bool = False,
) -> Storage:
    """Create (the folder too: after the existing ones) or change a storage; its path never
    changes once created: the stored files are found through it."""
    values = load(SCHEMA, data, partial=partial)
    created = storage is None
    if storage is None:
        path = Path(values["path"])
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Invalid({"path": [f"cannot create the folder: {exc.strerror}"]}) from None
        last = Storage.select().order_by(Storage.position.desc()).first()
        storage = Storage(position=(last.position + 1) if last else 0)
    elif values.get("path", storage.path) != storage.path:
        raise Invalid({"path": ["the path of a storage cannot change"]})
    for name, value in values.items():
        setattr(storage, name, value)
    try:
        storage.save()
    except IntegrityError:
        raise Taken({"name": ["a storage with this name already exists"]}) from None
    pacs.archive.folders.invalidate()
    record(actor, "storage_save", target=storage.name, created=created)
    return storage


def delete(pacs: Pacs, storage: Storage, actor: Actor | None = None) -> None:
    """Delete a storage that holds no instance (else :class:`Conflict`: disable it)."""
    if Instance.select().where(Instance.storage == storage).exists():
        raise Conflict("the storage still holds instances")
    storage.delete_instance()
    pacs.archive.folders.invalidate()
    record(actor, "storage_delete", target=storage.name)
