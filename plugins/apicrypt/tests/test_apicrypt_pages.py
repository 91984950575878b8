"""The apicrypt plugin's console pages and API: our identity (PKCS#12 or PEM key +
certificate uploads, shown without the key), the correspondents' directory (import,
search, remove after confirmation), errors next to the fields, CSRF and rights."""

from __future__ import annotations

import io
from pathlib import Path

import pacscore_apicrypt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from pacscore_apicrypt.models import ApicryptCertificate, ApicryptIdentity

from pacscore.db import connection
from tests.conftest import new_pacs
from tests.pki import TestCA
from tests.webclient import Console, add_user, web_app

pytestmark = pytest.mark.timeout(60)
P12_PASSWORD = "p12-secret-passphrase"


@pytest.fixture(scope="module")
def pki():
    ca = TestCA("apicrypt pages CA")
    return {
        "ca": ca,
        "us": ca.person("Centre Imagerie", "imagerie@centre.apicrypt.org"),
        "dupont": ca.person("Jean Dupont", "jean.dupont@medical69.apicrypt.org"),
        "martin": ca.person(
            "Anne Martin", "anne.martin@medical38.apicrypt.org", days=-1, start_days=-30
        ),  # fmt: skip
    }


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def pacs(home):
    """The pages are thin over directory.py (tested on both databases): SQLite is enough."""
    pacs = new_pacs(home, "sqlite:///index.db")
    pacs.hooks.register(pacscore_apicrypt, name="apicrypt")
    pacs.prepare_plugin_tables()
    yield pacs
    pacs.database.close_all()


@pytest.fixture
def admin(pacs):
    add_user("root", "system administrator")
    console = Console(web_app(pacs))
    console.login("root")
    return console


def upload(data: bytes, name: str = "upload.bin"):
    return (io.BytesIO(data), name)


def p12(issued, password: str) -> bytes:
    return pkcs12.serialize_key_and_certificates(
        b"us", issued.key, issued.cert, None,
        serialization.BestAvailableEncryption(password.encode()),
    )  # fmt: skip


def files_containing(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_import_our_identity_from_pkcs12_and_pem(admin, pki, home, pacs):
    assert "No identity imported" in admin.get("/apicrypt/identity").text
    wrong = admin.post("/apicrypt/identity", {"file": upload(p12(pki["us"], P12_PASSWORD)),
                                              "password": "wrong"})  # fmt: skip
    assert wrong.status_code == 200 and "wrong password" in wrong.text
    assert P12_PASSWORD not in wrong.text and 'value="wrong"' not in wrong.text

    done = admin.post("/apicrypt/identity", {"file": upload(p12(pki["us"], P12_PASSWORD)),
                                             "password": P12_PASSWORD})  # fmt: skip
    assert done.status_code == 302
    page = admin.get("/apicrypt/identity").text
    assert "imagerie@centre.apicrypt.org" in page and "CN=Centre Imagerie" in page
    assert pki["us"].cert.not_valid_after_utc.strftime("%Y-%m-%d") in page
    with connection():
        assert pacscore_apicrypt.directory.identity(pacs).key.private_numbers() == (
            pki["us"].key.private_numbers()
        )
    # the key is on disk only encrypted: no file of the home holds it in clear
    clear_key = pki["us"].key_pem().split(b"\n")[1]
    assert files_containing(home, clear_key) == []
    assert clear_key not in page.encode()

    # PEM certificate + separate encrypted PEM key replaces it; through the API too
    pem = admin.post("/apicrypt/identity", {
        "file": upload(pki["dupont"].cert_pem()),
        "key": upload(pki["dupont"].key_pem(b"key-pass")), "password": "key-pass"})  # fmt: skip
    assert pem.status_code == 302
    api = admin.api("GET", "/api/v1/apicrypt/identity").json
    assert api["email"] == "jean.dupont@medical69.apicrypt.org" and "key" not in api
    mismatch = admin.api("POST", "/api/v1/apicrypt/identity", data={
        "file": upload(pki["us"].cert_pem()), "key": upload(pki["dupont"].key_pem())})  # fmt: skip
    assert mismatch.status_code == 400
    assert mismatch.json["errors"] == {"file": ["no certificate matches the private key"]}
    with connection():
        assert ApicryptIdentity.get().email == "jean.dupont@medical69.apicrypt.org"


def test_correspondents_directory(admin, pki):
    bundle = pkcs7.serialize_certificates(
        [pki["dupont"].cert, pki["martin"].cert], serialization.Encoding.DER
    )
    done = admin.post("/apicrypt/certificates", {"file": upload(bundle, "annuaire.p7b")})
    assert done.status_code == 302 and "2 certificate" in admin.get(done.location).text
    listing = admin.get("/apicrypt/certificates").text
    assert "jean.dupont@medical69.apicrypt.org" in listing and "expired" in listing
    found = admin.get("/apicrypt/certificates?search=DUPONT").text
    assert "jean.dupont@" in found and "anne.martin@" not in found
    api = admin.api("GET", "/api/v1/apicrypt/certificates?search=martin").json["certificates"]
    assert [c["email"] for c in api] == ["anne.martin@medical38.apicrypt.org"]

    der = pki["us"].cert.public_bytes(serialization.Encoding.DER)
    added = admin.api("POST", "/api/v1/apicrypt/certificates", data={"file": upload(der)})
    assert added.status_code == 201 and len(added.json["added"]) == 1
    bad = admin.post("/apicrypt/certificates", {"file": upload(b"not a certificate")})
    assert bad.status_code == 200 and 'class="errors"' in bad.text
    assert admin.api("POST", "/api/v1/apicrypt/certificates", data={}).status_code == 400

    with connection():
        dupont = ApicryptCertificate.get(ApicryptCertificate.email.startswith("jean"))
    confirm = admin.get(f"/apicrypt/certificates/{dupont.id}/remove")
    assert "jean.dupont@" in confirm.text and 'name="confirm" value="yes"' in confirm.text
    admin.post(f"/apicrypt/certificates/{dupont.id}/remove")  # not confirmed: kept
    with connection():
        assert ApicryptCertificate.select().count() == 3
    removed = admin.post(f"/apicrypt/certificates/{dupont.id}/remove", {"confirm": "yes"})
    assert removed.status_code == 302
    assert admin.api("DELETE", f"/api/v1/apicrypt/certificates/{dupont.id}").status_code == 404
    with connection():
        assert ApicryptCertificate.select().count() == 2


def test_large_uploads_are_refused_before_they_could_be_spooled_to_disk(admin, pki):
    big = pki["us"].key_pem() + b"\n" * (300 * 1024)
    refused = admin.post("/apicrypt/identity", {"file": upload(big)})
    assert refused.status_code == 413
    with connection():
        assert ApicryptIdentity.select().count() == 0


def test_csrf_and_rights(pacs, pki):
    app = web_app(pacs)
    add_user("root", "system administrator")
    admin = Console(app)
    admin.login("root")
    no_token = admin.client.post("/apicrypt/certificates",
                                 data={"file": upload(pki["dupont"].cert_pem())})  # fmt: skip
    assert no_token.status_code == 400

    add_user("med", "medical administrator")  # no configure right
    med = Console(app)
    med.login("med")
    for path in ("/apicrypt/identity", "/apicrypt/certificates"):
        assert med.get(path).status_code == 403
        assert med.post(path, {"file": upload(pki["dupont"].cert_pem())}).status_code == 403
    assert med.api("GET", "/api/v1/apicrypt/certificates").status_code == 403
    assert Console(app).get("/apicrypt/identity").status_code == 302
    assert Console(app).api("GET", "/api/v1/apicrypt/identity").status_code == 401
    with connection():
        assert ApicryptCertificate.select().count() == 0
