"""Console pages and API routes of the apicrypt plugin: our identity (show, import
PKCS#12 or PEM key + certificate) and the correspondents' certificate directory
(list, search, import, remove), thin over :mod:`pacscore_apicrypt.directory`.

Right ``configure``: the signing key and the directory are configuration.
Uploaded key material stays in memory: a request over ``MAX_UPLOAD_BYTES`` (or
without a length) is refused before its body is read, because Werkzeug spools a
larger multipart body to a temporary file; the key is stored only encrypted
(``pacs.secrets``), and neither the key nor its password is ever sent back.
"""

from __future__ import annotations

from cryptography import x509
from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from marshmallow import Schema, ValidationError, fields, validate

from pacscore.db import utcnow
from pacscore.services.schemas import UtcDateTime
from pacscore.web.common import InvalidInput, get_pacs, load_args, record
from pacscore.web.openapi import doc
from pacscore.web.security import require_right

from . import directory
from .models import ApicryptCertificate, ApicryptIdentity

RIGHT = "configure"
# well under Werkzeug's 500 KiB in-memory limit for uploaded files
MAX_UPLOAD_BYTES = 256 * 1024


class IdentityForm(Schema):
    password = fields.String(load_default="", validate=validate.Length(max=1024))


class CertificateSearchSchema(Schema):
    search = fields.String(load_default="", validate=validate.Length(max=200))


# -- API documents (the uploads are read from request.files, not through these) --

BINARY = {"type": "string", "format": "binary"}


class IdentityUploadSchema(Schema):
    file = fields.Raw(required=True, metadata={**BINARY, "description": "PKCS#12, or PEM"})
    key = fields.Raw(metadata={**BINARY, "description": "the PEM key, if not in `file`"})
    password = fields.String(validate=validate.Length(max=1024))


class CertificateUploadSchema(Schema):
    file = fields.Raw(required=True, metadata={**BINARY, "description": "PEM, DER or PKCS#7"})


class IdentitySchema(Schema):
    name = fields.String()
    email = fields.String()
    subject = fields.String()
    issuer = fields.String()
    fingerprint = fields.String(metadata={"description": "SHA-256 of the certificate, hex"})
    not_after = UtcDateTime()
    imported = UtcDateTime()


class CertificateSchema(Schema):
    id = fields.Integer()
    email = fields.String()
    name = fields.String()
    subject = fields.String()
    issuer = fields.String()
    fingerprint = fields.String(metadata={"description": "SHA-256, hex"})
    not_before = UtcDateTime()
    not_after = UtcDateTime()


class CertificateListSchema(Schema):
    certificates = fields.List(fields.Nested(CertificateSchema))


class CertificatesAddedSchema(Schema):
    added = fields.List(fields.Nested(CertificateSchema))


def read_uploads(*names: str) -> dict[str, bytes | None]:
    """The uploaded files' bytes (None when absent), read in memory only.

    A body without a Content-Length (chunked) is not parsed at all: it counts as
    no upload, since its size is unknown until it is spooled.
    """
    length = request.content_length
    if length is None:
        return dict.fromkeys(names)
    if length > MAX_UPLOAD_BYTES:
        abort(413, f"uploads are limited to {MAX_UPLOAD_BYTES // 1024} KiB")
    uploads = {}
    for name in names:
        storage = request.files.get(name)
        data = storage.read() if storage else b""
        uploads[name] = data or None
    return uploads


def identity_view(row: ApicryptIdentity | None) -> dict | None:
    """What is shown of our identity: never the key."""
    if row is None:
        return None
    cert = x509.load_pem_x509_certificates(row.cert_pem.encode())[0]
    return {
        "name": row.name,
        "email": row.email,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "fingerprint": row.fingerprint,
        "not_after": row.not_after.isoformat(),
        "imported": row.imported.isoformat(),
    }


def do_import_identity() -> ApicryptIdentity:
    """Import from the request (fields ``file``, ``key``, ``password``); ValidationError."""
    uploads = read_uploads("file", "key")
    password = IdentityForm().load({"password": request.form.get("password", "")})["password"]
    if uploads["file"] is None:
        raise ValidationError({"file": ["choose a PKCS#12 or PEM file"]})
    try:
        row = directory.import_identity(
            get_pacs(), uploads["file"], password or None, uploads["key"]
        )
    except ValueError as exc:
        raise ValidationError({"file": [str(exc)]}) from None
    record("apicrypt_identity_import", target=row.email, fingerprint=row.fingerprint)
    return row


def do_import_certificates() -> list:
    uploads = read_uploads("file")
    if uploads["file"] is None:
        raise ValidationError({"file": ["choose a PEM, DER or PKCS#7 file"]})
    try:
        added = directory.import_certificates(uploads["file"])
    except ValueError as exc:
        raise ValidationError({"file": [str(exc)]}) from None
    record("apicrypt_certificates_import", target=", ".join(r.email for r in added))
    return added


def do_remove(cert_id: int) -> None:
    row = ApicryptCertificate.get_or_none(ApicryptCertificate.id == cert_id)
    if row is None or not directory.remove_certificate(cert_id):
        abort(404, "no such certificate")
    record("apicrypt_certificate_remove", target=row.email, fingerprint=row.fingerprint)


def make_page_blueprint() -> Blueprint:
    bp = Blueprint(
        "apicrypt", __name__, url_prefix="/apicrypt", template_folder="console_templates"
    )

    @bp.route("/identity", methods=["GET", "POST"])
    @require_right(RIGHT)
    def identity():
        errors = {}
        if request.method == "POST":
            try:
                row = do_import_identity()
            except ValidationError as exc:
                errors = exc.normalized_messages()
            else:
                flash(f"Identity {row.name} <{row.email}> imported.", "success")
                return redirect(url_for("apicrypt.identity"))
        current = identity_view(ApicryptIdentity.select().first())
        return render_template("apicrypt/identity.html", identity=current, errors=errors)

    @bp.route("/certificates", methods=["GET", "POST"])
    @require_right(RIGHT)
    def certificates():
        errors = {}
        if request.method == "POST":
            try:
                added = do_import_certificates()
            except ValidationError as exc:
                errors = exc.normalized_messages()
            else:
                flash(f"{len(added)} certificate address(es) added.", "success")
                return redirect(url_for("apicrypt.certificates"))
        search = load_args(CertificateSearchSchema())["search"]
        return render_template(
            "apicrypt/certificates.html", rows=directory.list_certificates(search),
            search=search, errors=errors, now=utcnow(),
        )  # fmt: skip

    @bp.route("/certificates/<int:cert_id>/remove", methods=["GET", "POST"])
    @require_right(RIGHT)
    def remove(cert_id: int):
        row = ApicryptCertificate.get_or_none(ApicryptCertificate.id == cert_id)
        if row is None:
            abort(404, "no such certificate")
        if request.method == "POST" and request.form.get("confirm") == "yes":
            do_remove(cert_id)
            flash(f"Certificate of {row.email} removed.", "success")
            return redirect(url_for("apicrypt.certificates"))
        return render_template(
            "confirm.html", title="Remove a certificate",
            question=f"Remove the certificate of {row.email} ({row.name}, until "
                     f"{row.not_after:%Y-%m-%d})? Mail to this address cannot be encrypted then.",
            action=url_for("apicrypt.remove", cert_id=cert_id), button="Remove",
            cancel=url_for("apicrypt.certificates"),
        )  # fmt: skip

    return bp


def _api(call):
    try:
        return call()
    except ValidationError as exc:
        raise InvalidInput(exc.normalized_messages()) from None


def make_api_blueprint() -> Blueprint:
    bp = Blueprint("apicrypt_api", __name__, url_prefix="/api/v1/apicrypt")

    @bp.get("/identity")
    @require_right(RIGHT)
    @doc("Our signing identity (never its key)", response=IdentitySchema)
    def identity():
        current = identity_view(ApicryptIdentity.select().first())
        if current is None:
            abort(404, "no identity imported")
        return jsonify(IdentitySchema().dump(current))

    @bp.post("/identity")
    @require_right(RIGHT)
    @doc("Import our identity (key + certificate)", body=IdentityUploadSchema,
         body_content="multipart/form-data", response=IdentitySchema, status=201,
         errors=[413])  # fmt: skip
    def import_identity():
        row = _api(do_import_identity)
        return jsonify(IdentitySchema().dump(identity_view(row))), 201

    @bp.get("/certificates")
    @require_right(RIGHT)
    @doc("Correspondents' certificates", query=CertificateSearchSchema,
         response=CertificateListSchema)  # fmt: skip
    def certificates():
        search = load_args(CertificateSearchSchema())["search"]  # refuses NUL (PostgreSQL)
        rows = directory.list_certificates(search)
        return jsonify(CertificateListSchema().dump({"certificates": rows}))

    @bp.post("/certificates")
    @require_right(RIGHT)
    @doc("Import correspondents' certificates", body=CertificateUploadSchema,
         body_content="multipart/form-data", response=CertificatesAddedSchema, status=201,
         errors=[413])  # fmt: skip
    def import_certificates():
        added = _api(do_import_certificates)
        return jsonify(CertificatesAddedSchema().dump({"added": added})), 201

    @bp.delete("/certificates/<int:cert_id>")
    @require_right(RIGHT)
    @doc("Remove a correspondent's certificate", status=204)
    def remove(cert_id: int):
        do_remove(cert_id)
        return "", 204

    return bp


def make_blueprints() -> list[Blueprint]:
    return [make_page_blueprint(), make_api_blueprint()]
