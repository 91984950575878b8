"""The REST API (``/api/v1``): the console's operations as JSON.

Same rights and service filters as the console (the checks live in
:mod:`pacscore.web.security` and :mod:`pacscore.web.studyops`), and the same
operations: nodes, storages, accounts, profiles, plugins, settings and jobs
are changed through :mod:`pacscore.services`, whose refusals the application
answers (400 with the field errors, 404, 409).  Every input goes through a
marshmallow schema; invalid input answers 400 with the field errors.  Each
view carries its OpenAPI description (``@doc``, from
:mod:`pacscore.web.openapi`, which builds ``/api/v1/openapi.json`` from them).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, g, jsonify
from marshmallow import Schema

from pacscore.config import CoreSettingsSchema
from pacscore.db import check_database, redact
from pacscore.models import Node, Storage
from pacscore.services import Conflict, NotFound
from pacscore.services import audit as audit_service
from pacscore.services import jobs as job_service
from pacscore.services import nodes as node_service
from pacscore.services import plugins as plugin_service
from pacscore.services import settings as settings_service
from pacscore.services import storages as storage_service
from pacscore.services import users as user_service
from pacscore.services.schemas import NodeSchema, ProfileSchema, StorageSchema, UserSchema
from pacscore.web import studyops
from pacscore.web.common import (
    InvalidInput,
    actor,
    check_uid,
    get_pacs,
    json_object,
    load_args,
    load_json,
    record,
)
from pacscore.web.openapi import doc, openapi_document
from pacscore.web.schemas import (
    AuditEventSchema,
    AuditQuerySchema,
    DeletedSchema,
    EchoResultSchema,
    HealthSchema,
    InstanceSchema,
    JobQuerySchema,
    JobRefSchema,
    JobSchema,
    PluginChangeSchema,
    PluginSchema,
    ProfileDeleteSchema,
    SendSchema,
    SeriesSchema,
    StudyDetailSchema,
    StudyPageSchema,
    StudySchema,
    StudySearchSchema,
)
from pacscore.web.security import current_user, public, require_right

bp = Blueprint("api", __name__, url_prefix="/api/v1")


ANY_OBJECT = {"type": "object"}


def _dump(schema: type[Schema], obj: Any, many: bool = False, status: int = 200):
    return jsonify(schema(many=many).dump(obj)), status


# -- service -------------------------------------------------------------------------


@bp.get("/health")
@public
@doc(
    "Health: the database gives a connection and answers (503 and what failed otherwise)",
    response=HealthSchema,
    other_responses={503: ("a part is failing (`checks` says which)", HealthSchema)},
)
def health():
    checks = g.get("health_checks") or health_checks()
    ok = all(check["status"] == "ok" for check in checks.values())
    answer = {"status": "ok" if ok else "failing", "aet": get_pacs().config.aet, "checks": checks}
    return jsonify(answer), 200 if ok else 503


def health_checks() -> dict[str, dict]:
    """Each part the server needs, checked within a bounded time (db.check_database)."""
    database = check_database()
    if "error" in database:  # public: never the database password
        database["error"] = redact(database["error"], get_pacs().config.db_url)
    return {"database": database}


def health_before_request() -> tuple[Response, int] | None:
    """Run before anything else of the request needs the database (the per-request
    connection, the API's IP allow-list): a failing database still gets its 503."""
    g.health_checks = checks = health_checks()
    if all(check["status"] == "ok" for check in checks.values()):
        return None
    return health()


@bp.get("/openapi.json")
@public
@doc("This OpenAPI 3 document")
def openapi():
    return jsonify(openapi_document())


# -- studies ------------------------------------------------------------------------------


@bp.get("/studies")
@require_right("view_studies")
@doc("Search studies (DICOM wildcards)", query=StudySearchSchema, response=StudyPageSchema)
def studies():
    filters = load_args(StudySearchSchema())
    query = studyops.search(current_user(), filters)
    page = list(query.paginate(filters["page"], filters["page_size"]))
    result = {
        "total": query.count(),
        "page": filters["page"],
        "page_size": filters["page_size"],
        "studies": page,
    }
    return _dump(StudyPageSchema, result)


@bp.get("/studies/<uid>")
@require_right("view_studies")
@doc("A study with its series", response=StudyDetailSchema)
def study(uid: str):
    found = studyops.study_or_404(current_user(), check_uid(uid))
    data = StudySchema().dump(found)
    data["series"] = SeriesSchema(many=True).dump(studyops.series_of(found))
    return jsonify(data)


@bp.get("/studies/<uid>/series/<series_uid>/instances")
@require_right("view_studies")
@doc("The instances of a series", response=InstanceSchema, many=True)
def instances(uid: str, series_uid: str):
    found = studyops.study_or_404(current_user(), check_uid(uid))
    series = studyops.series_or_404(found, check_uid(series_uid))
    return _dump(InstanceSchema, list(studyops.instances_of(found, series)), many=True)


def _zip(found, series=None) -> Response:
    entries = studyops.zip_entries(get_pacs(), found, series)
    record("export", target=found.study_uid, series=series.series_uid if series else "",
           instances=len(entries), via="api")  # fmt: skip
    name = studyops.zip_name(found, series)
    return Response(
        studyops.zip_stream(entries),
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/studies/<uid>/download")
@require_right("download")
@doc("The study as a ZIP (streamed)", content="application/zip")
def download_study(uid: str):
    return _zip(studyops.study_or_404(current_user(), check_uid(uid)))


@bp.get("/studies/<uid>/series/<series_uid>/download")
@require_right("download")
@doc("A series as a ZIP (streamed)", content="application/zip")
def download_series(uid: str, series_uid: str):
    found = studyops.study_or_404(current_user(), check_uid(uid))
    return _zip(found, studyops.series_or_404(found, check_uid(series_uid)))


@bp.delete("/studies/<uid>")
@require_right("delete")
@doc("Delete a study (fires on_delete, audited)", response=DeletedSchema)
def delete_study(uid: str):
    found = studyops.study_or_404(current_user(), check_uid(uid))
    count = studyops.delete_instances(get_pacs(), found, None, current_user().login)
    record("delete", target=found.study_uid, instances=count, via="api")
    return _dump(DeletedSchema, {"deleted_instances": count})


@bp.delete("/studies/<uid>/series/<series_uid>")
@require_right("delete")
@doc("Delete a series", response=DeletedSchema)
def delete_series(uid: str, series_uid: str):
    found = studyops.study_or_404(current_user(), check_uid(uid))
    series = studyops.series_or_404(found, check_uid(series_uid))
    count = studyops.delete_instances(get_pacs(), found, series, current_user().login)
    record("delete", target=found.study_uid, series=series.series_uid, instances=count, via="api")
    return _dump(DeletedSchema, {"deleted_instances": count})


@bp.post("/studies/<uid>/send")
@require_right("send")
@doc("Send a study to a node (a background job)", body=SendSchema, response=JobRefSchema,
     status=202)  # fmt: skip
def send_study(uid: str):
    found = studyops.study_or_404(current_user(), check_uid(uid))
    values = load_json(SendSchema())
    node = Node.get_or_none(Node.name == values["node"])
    if node is None or not node.enabled:
        raise InvalidInput({"node": ["no such node" if node is None else "the node is disabled"]})
    job_id = studyops.enqueue_send(get_pacs(), found, node, current_user().login)
    record("send_request", target=found.study_uid, node=node.name, job_id=job_id, via="api")
    return _dump(JobRefSchema, {"job_id": job_id, "state": "pending"}, status=202)


# -- nodes ------------------------------------------------------------------------------------


@bp.get("/nodes")
@require_right("manage_nodes")
@doc("Declared DICOM nodes", response=NodeSchema, many=True)
def nodes():
    return _dump(NodeSchema, node_service.listed(), many=True)


@bp.post("/nodes")
@require_right("manage_nodes")
@doc("Declare a node", body=NodeSchema, response=NodeSchema, status=201)
def create_node():
    node = node_service.save(get_pacs(), None, json_object(), actor("api"))
    return _dump(NodeSchema, node, status=201)


@bp.get("/nodes/<int:node_id>")
@require_right("manage_nodes")
@doc("One node", response=NodeSchema)
def node(node_id: int):
    return _dump(NodeSchema, node_service.get(node_id))


@bp.patch("/nodes/<int:node_id>")
@require_right("manage_nodes")
@doc("Change a node (only the given fields)", body=NodeSchema, response=NodeSchema)
def update_node(node_id: int):
    target = node_service.get(node_id)
    node_service.save(get_pacs(), target, json_object(), actor("api"), partial=True)
    return _dump(NodeSchema, target)


@bp.delete("/nodes/<int:node_id>")
@require_right("manage_nodes")
@doc("Delete a node", status=204)
def delete_node(node_id: int):
    node_service.delete(get_pacs(), node_service.get(node_id), actor("api"))
    return "", 204


@bp.post("/nodes/<int:node_id>/echo")
@require_right("manage_nodes")
@doc("C-ECHO a node", response=EchoResultSchema)
def echo_node(node_id: int):
    return _dump(EchoResultSchema, node_service.echo(get_pacs(), node_service.get(node_id)))


# -- storages -----------------------------------------------------------------------------------


def _storage_out(storage: Storage) -> dict:
    data = StorageSchema().dump(storage)
    data["free_mb"] = storage_service.free_mb(storage)
    return data


@bp.get("/storages")
@require_right("manage_storages")
@doc("Storage folders with their free space", response=StorageSchema, many=True)
def storages():
    return jsonify([_storage_out(s) for s in storage_service.listed()])


@bp.post("/storages")
@require_right("manage_storages")
@doc("Add a storage folder", body=StorageSchema, response=StorageSchema, status=201)
def create_storage():
    storage = storage_service.save(get_pacs(), None, json_object(), actor("api"))
    return jsonify(_storage_out(storage)), 201


@bp.patch("/storages/<int:storage_id>")
@require_right("manage_storages")
@doc("Change a storage folder (name, enabled, limit)", body=StorageSchema,
     response=StorageSchema)  # fmt: skip
def update_storage(storage_id: int):
    storage = storage_service.get(storage_id)
    storage_service.save(get_pacs(), storage, json_object(), actor("api"), partial=True)
    return jsonify(_storage_out(storage))


@bp.delete("/storages/<int:storage_id>")
@require_right("manage_storages")
@doc("Delete an empty storage folder", status=204, errors=[409])
def delete_storage(storage_id: int):
    storage_service.delete(get_pacs(), storage_service.get(storage_id), actor("api"))
    return "", 204


# -- users and profiles ------------------------------------------------------------------------


@bp.get("/users")
@require_right("manage_users")
@doc("User accounts", response=UserSchema, many=True)
def users():
    return _dump(UserSchema, user_service.users(), many=True)


@bp.post("/users")
@require_right("manage_users")
@doc("Create an account", body=UserSchema, response=UserSchema, status=201)
def create_user():
    user = user_service.save_user(get_pacs(), None, json_object(), actor("api"))
    return _dump(UserSchema, user, status=201)


@bp.get("/users/<int:user_id>")
@require_right("manage_users")
@doc("One account", response=UserSchema)
def user(user_id: int):
    return _dump(UserSchema, user_service.get_user(user_id))


@bp.patch("/users/<int:user_id>")
@require_right("manage_users")
@doc("Change an account (only the given fields)", body=UserSchema, response=UserSchema)
def update_user(user_id: int):
    target = user_service.get_user(user_id)
    user_service.save_user(get_pacs(), target, json_object(), actor("api"), partial=True)
    return _dump(UserSchema, target)


@bp.delete("/users/<int:user_id>")
@require_right("manage_users")
@doc("Delete an account (not your own)", status=204, errors=[409])
def delete_user(user_id: int):
    user_service.delete_user(user_service.get_user(user_id), actor("api"))
    return "", 204


@bp.post("/users/<int:user_id>/unlock")
@require_right("manage_users")
@doc("Unlock an account", response=UserSchema)
def unlock_user(user_id: int):
    target = user_service.get_user(user_id)
    user_service.unlock_user(target, actor("api"))
    return _dump(UserSchema, target)


@bp.get("/profiles")
@require_right("manage_users")
@doc("Profiles and their rights", response=ProfileSchema, many=True)
def profiles():
    return _dump(ProfileSchema, user_service.profiles(), many=True)


@bp.post("/profiles")
@require_right("manage_users")
@doc("Create a profile", body=ProfileSchema, response=ProfileSchema, status=201)
def create_profile():
    profile = user_service.create_profile(json_object(), actor("api"))
    return _dump(ProfileSchema, profile, status=201)


@bp.patch("/profiles/<int:profile_id>")
@require_right("manage_users")
@doc("Change the rights of a profile", body=ProfileSchema, response=ProfileSchema)
def update_profile(profile_id: int):
    profile = user_service.get_profile(profile_id)
    user_service.update_profile(profile, json_object(), actor("api"))
    return _dump(ProfileSchema, profile)


@bp.delete("/profiles/<int:profile_id>")
@require_right("manage_users")
@doc("Delete a profile (?replacement=NAME when users have it)", query=ProfileDeleteSchema,
     status=204)  # fmt: skip
def delete_profile(profile_id: int):
    profile = user_service.get_profile(profile_id)
    replacement = load_args(ProfileDeleteSchema())["replacement"]
    user_service.delete_profile(profile, replacement, actor("api"))
    return "", 204


# -- plugins and settings --------------------------------------------------------------------


@bp.get("/plugins")
@require_right("manage_plugins")
@doc("Installed plugins and their state", response=PluginSchema, many=True)
def plugins():
    pacs = get_pacs()
    return _dump(
        PluginSchema, [plugin_service.describe(pacs, i) for i in pacs.hooks.list()], many=True
    )


@bp.patch("/plugins/<name>")
@require_right("manage_plugins")
@doc("Enable or disable a plugin", body=PluginChangeSchema, partial=False, response=PluginSchema)
def update_plugin(name: str):
    pacs = get_pacs()
    info = plugin_service.get(pacs, name)
    values = load_json(PluginChangeSchema())
    plugin_service.set_enabled(pacs, info, values["enabled"], actor("api"))
    return _dump(PluginSchema, plugin_service.describe(pacs, info))


def _plugin_schema(name: str) -> Schema:
    plugin_service.get(get_pacs(), name)
    return plugin_service.settings_schema(get_pacs(), name)


@bp.get("/plugins/<name>/settings")
@require_right("manage_plugins")
@doc("A plugin's settings (fields defined by the plugin's schema)", response=ANY_OBJECT)
def plugin_settings(name: str):
    schema = _plugin_schema(name)
    return jsonify(schema.dump(get_pacs().plugin_settings(name)))


@bp.patch("/plugins/<name>/settings")
@require_right("manage_plugins")
@doc("Change a plugin's settings (validated by its schema, applied at once)", body=ANY_OBJECT,
     response=ANY_OBJECT)  # fmt: skip
def update_plugin_settings(name: str):
    schema = _plugin_schema(name)
    saved = plugin_service.save_settings(get_pacs(), name, json_object(), actor("api"))
    return jsonify(schema.dump(saved))


@bp.get("/settings")
@require_right("configure")
@doc("The core settings", response=CoreSettingsSchema)
def settings():
    return jsonify(settings_service.core(get_pacs()))


@bp.patch("/settings")
@require_right("configure")
@doc("Change core settings (only the given keys)", body=CoreSettingsSchema,
     response=CoreSettingsSchema)  # fmt: skip
def update_settings():
    # audited as the console's page does (no "via")
    return jsonify(settings_service.update(get_pacs(), json_object(), actor()))


# -- audit and jobs -------------------------------------------------------------------------


@bp.get("/audit")
@require_right("view_audit")
@doc("Audit events, newest first", query=AuditQuerySchema, response=AuditEventSchema, many=True)
def audit():
    filters = load_args(AuditQuerySchema())
    rows = audit_service.query(filters).paginate(filters["page"], filters["page_size"])
    return _dump(AuditEventSchema, list(rows), many=True)


@bp.get("/jobs")
@require_right("manage_jobs")
@doc("Background jobs, newest first", query=JobQuerySchema, response=JobSchema, many=True)
def jobs():
    filters = load_args(JobQuerySchema())
    rows = job_service.query(filters["state"]).paginate(filters["page"], filters["page_size"])
    return _dump(JobSchema, list(rows), many=True)


@bp.post("/jobs/<int:job_id>/retry")
@require_right("manage_jobs")
@doc("Make a job due now", response=JobSchema, errors=[409])
def retry_job(job_id: int):
    try:
        job = job_service.retry(get_pacs(), job_id, actor("api"))
    except (NotFound, Conflict) as exc:
        abort(404 if isinstance(exc, NotFound) else 409, "the job is running or does not exist")
    return _dump(JobSchema, job)


@bp.delete("/jobs/<int:job_id>")
@require_right("manage_jobs")
@doc("Delete a job", status=204)
def delete_job(job_id: int):
    job_service.delete(get_pacs(), job_id, actor("api"))
    return "", 204
