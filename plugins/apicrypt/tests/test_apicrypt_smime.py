"""APICrypt mail end to end: a test CA, our certificate and the correspondents'
ones made here; the mail captured by a real SMTP server (aiosmtpd) is
decrypted and its signature verified with Debian's ``openssl cms``; a third
party cannot decrypt it; a recipient without a certificate gets nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pacscore_apicrypt
import pacscore_email
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from pacscore_apicrypt import directory
from pacscore_apicrypt.models import ApicryptIdentity

from pacscore.db import connection
from tests.conftest import PacsProcess, new_pacs
from tests.pki import TestCA
from tests.smtpserver import SmtpServer

pytestmark = pytest.mark.timeout(120)

SECRET_PHRASE = "Compte rendu confidentiel: nodule de 8 mm"
DR_A = "jean.DUPONT@medical69.apicrypt.org"
DR_B = "marie.martin@medical13.apicrypt.org"
NO_CERT = "paul.durand@medical75.apicrypt.org"
OUR_ADDRESS = "pacs@medical59.apicrypt.org"


@pytest.fixture(scope="module")
def pki():
    ca = TestCA("APICrypt test CA")
    return {
        "ca": ca,
        "us": ca.person("PACS Radiologie Nord", "pacs@medical59.apicrypt.org"),
        "a": ca.person("Jean Dupont", DR_A.lower()),
        "b": ca.person("Marie Martin", DR_B),
        "third": ca.person("Someone Else", "else@medical01.apicrypt.org"),
        "expired": ca.person("Old Cert", "old@medical02.apicrypt.org", days=-1, start_days=-30),
    }


@pytest.fixture
def smtp(tmp_path):
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


def apicrypt_pacs(home: Path, db_url: str, smtp: SmtpServer):
    pacs = new_pacs(home, db_url)
    pacs.hooks.register(pacscore_email, name="email")
    pacs.hooks.register(pacscore_apicrypt, name="apicrypt")
    pacs.prepare_plugin_tables()
    with connection():
        pacs.save_plugin_settings(
            "email", {**smtp.settings(), "sender": "pacs@medical59.apicrypt.org"}
        )
    return pacs


def run_mail_jobs(pacs):
    ran = []
    while (job := pacs.jobs.take(["mail"], "test")) is not None:
        pacs.jobs.run(job)
        ran.append(pacs.jobs.get(job.id))
    return ran


def openssl(*args: str, cwd: Path):
    return subprocess.run(
        ["/usr/bin/openssl", "cms", *args], capture_output=True, cwd=cwd, timeout=60
    )


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_mail_to_apicrypt_recipients_is_signed_and_encrypted_for_each(
    make_pacs, smtp, pki, tmp_path
):
    pacs = make_pacs()
    pacs.hooks.register(pacscore_email, name="email")
    pacs.hooks.register(pacscore_apicrypt, name="apicrypt")
    pacs.prepare_plugin_tables()
    p12 = pkcs12.serialize_key_and_certificates(
        b"us", pki["us"].key, pki["us"].cert, [pki["ca"].cert],
        serialization.BestAvailableEncryption(b"p12-pass"),
    )  # fmt: skip
    with connection():
        pacs.save_plugin_settings(
            "email", {**smtp.settings(), "sender": "pacs@medical59.apicrypt.org"}
        )
        directory.import_identity(pacs, p12, "p12-pass")
        stored_key = ApicryptIdentity.get().key
        directory.import_certificates(pki["a"].cert_pem() + pki["b"].cert_pem())
    assert stored_key.startswith("enc:") and "PRIVATE KEY" not in stored_key

    html = f"<p>{SECRET_PHRASE}</p>"
    pacs.send_mail([DR_A, DR_B], "Résultat examen 2024-117", SECRET_PHRASE, html=html)
    [job] = run_mail_jobs(pacs)
    assert (job.state, job.last_error) == ("done", "")

    [mail] = smtp.wait_for(1)
    assert sorted(mail.recipients) == sorted([DR_A, DR_B])
    message = mail.message
    assert message["Subject"] == "Résultat examen 2024-117"  # the one clear part
    assert message.get_content_type() == "application/pkcs7-mime"
    assert message.get_param("smime-type") == "enveloped-data"
    assert b"nodule" not in mail.data and b"confidentiel" not in mail.data

    work = tmp_path / "cms"
    work.mkdir()
    eml = write(work, "mail.eml", mail.data)
    write(work, "ca.pem", pki["ca"].cert_pem())
    for who in ("a", "b"):
        cert, key = pki[who].write(work, who)
        decrypted = openssl("-decrypt", "-in", str(eml), "-recip", str(cert), "-inkey", str(key),
                            "-out", f"{who}-signed.eml", cwd=work)  # fmt: skip
        assert decrypted.returncode == 0, decrypted.stderr.decode()
        verified = openssl("-verify", "-in", f"{who}-signed.eml", "-CAfile", "ca.pem",
                           "-out", f"{who}-inner.eml", cwd=work)  # fmt: skip
        assert verified.returncode == 0, verified.stderr.decode()
        assert b"Verification successful" in verified.stderr
        inner = (work / f"{who}-inner.eml").read_bytes()
        assert b"nodule de 8 mm" in inner and b"<p>Compte rendu" in inner

    # the signer is us
    signer = openssl("-verify", "-in", "a-signed.eml", "-CAfile", "ca.pem", "-signer",
                     "signer.pem", "-out", "/dev/null", cwd=work)  # fmt: skip
    assert signer.returncode == 0
    assert (work / "signer.pem").read_bytes().strip() == pki["us"].cert_pem().strip()

    # a third party's key, from the same CA, cannot decrypt it
    cert, key = pki["third"].write(work, "third")
    stolen = openssl("-decrypt", "-in", str(eml), "-recip", str(cert), "-inkey", str(key),
                     "-out", "third.eml", cwd=work)  # fmt: skip
    assert stolen.returncode != 0
    assert (
        b"nodule" not in (work / "third.eml").read_bytes()
        if (work / "third.eml").exists()
        else True
    )


def test_no_clear_text_to_an_apicrypt_address_without_a_valid_certificate(tmp_path, smtp, pki):
    pacs = apicrypt_pacs(tmp_path / "home", "sqlite:///index.db", smtp)
    with connection():
        pacs.save_plugin_settings("apicrypt", {"domain_patterns": ["*.apicrypt.org"]})
        # no identity yet: refused as well
    pacs.send_mail([DR_A], "s", SECRET_PHRASE)
    [job] = run_mail_jobs(pacs)
    assert job.state == "failed" and "no key and certificate of ours" in job.last_error

    with connection():
        directory.import_identity(pacs, pki["us"].cert_pem() + pki["us"].key_pem())
        directory.import_certificates(pki["a"].cert_pem() + pki["expired"].cert_pem())
    pacs.send_mail([DR_A, NO_CERT], "s", SECRET_PHRASE)
    pacs.send_mail(["old@medical02.apicrypt.org"], "s", SECRET_PHRASE)
    # a clear-text colleague on the same mail needs a certificate too: one body for all
    pacs.send_mail([DR_A, "secretariat@hospital.example"], "s", SECRET_PHRASE)
    jobs = run_mail_jobs(pacs)
    assert [j.state for j in jobs] == ["failed", "failed", "failed"]
    assert f"no certificate for {NO_CERT}" in jobs[0].last_error
    assert "never in clear" in jobs[0].last_error
    assert "the certificate of old@medical02.apicrypt.org expired on" in jobs[1].last_error
    assert "no certificate for secretariat@hospital.example" in jobs[2].last_error
    assert smtp.received == []

    # mail to other domains is not touched
    pacs.send_mail(["secretariat@hospital.example"], "clear", "not medical")
    assert run_mail_jobs(pacs)[0].state == "done"
    assert smtp.wait_for(1)[0].message.get_content().strip() == "not medical"


def test_identity_import_checks_the_key_and_the_password(tmp_path, pki, smtp):
    pacs = apicrypt_pacs(tmp_path / "home", "sqlite:///index.db", smtp)
    us, other = pki["us"], pki["a"]
    with connection():
        with pytest.raises(ValueError, match="no certificate matches the private key"):
            directory.import_identity(pacs, us.cert_pem(), key_data=other.key_pem())
        with pytest.raises(ValueError, match="wrong password"):
            directory.import_identity(pacs, us.cert_pem(), "bad", key_data=us.key_pem(b"good"))
        p12 = pkcs12.serialize_key_and_certificates(
            b"us", us.key, us.cert, None, serialization.BestAvailableEncryption(b"good")
        )
        with pytest.raises(ValueError, match="PKCS#12"):
            directory.import_identity(pacs, p12, "bad")
        assert ApicryptIdentity.select().count() == 0
        row = directory.import_identity(pacs, us.cert_pem(), "good", key_data=us.key_pem(b"good"))
        assert row.email == "pacs@medical59.apicrypt.org"
        assert directory.identity(pacs).cert == us.cert


def test_directory_import_list_search_and_expiry(tmp_path, pki, smtp):
    apicrypt_pacs(tmp_path / "home", "sqlite:///index.db", smtp)
    with connection():
        added = directory.import_certificates(pki["a"].cert_pem() + pki["b"].cert_pem())
        assert [r.email for r in added] == [DR_A.lower(), DR_B]
        assert directory.import_certificates(pki["a"].cert_pem()) == []  # already known
        der = pki["expired"].cert.public_bytes(serialization.Encoding.DER)
        directory.import_certificates(der)
        assert [r.name for r in directory.list_certificates("dupont")] == ["Jean Dupont"]
        assert [r.email for r in directory.list_certificates("MEDICAL13")] == [DR_B]
        assert len(directory.list_certificates()) == 3
        with pytest.raises(ValueError, match="no certificate found"):
            directory.import_certificates(b"not a certificate")
        with pytest.raises(LookupError, match="expired on"):
            directory.certificate_for("old@medical02.apicrypt.org")
        assert directory.certificate_for(DR_A) == pki["a"].cert  # case-insensitive address
        assert directory.remove_certificate(added[0].id)
        with pytest.raises(LookupError, match="no certificate for"):
            directory.certificate_for(DR_A)


def test_apicrypt_commands(pki, tmp_path):
    pacs_home = PacsProcess(tmp_path / "cli-home", "sqlite:///index.db").init()
    certs = tmp_path / "certs"
    a_cert, _ = pki["a"].write(certs, "a")
    b_cert, _ = pki["b"].write(certs, "b")
    us_cert, us_key = pki["us"].write(certs, "us")
    out = pacs_home.cli("apicrypt", "cert", "import", str(a_cert), str(b_cert)).stdout
    assert "2 certificate(s) imported" in out
    listing = pacs_home.cli("apicrypt", "cert", "list", "--search", "martin").stdout
    assert DR_B in listing and DR_A.lower() not in listing
    out = pacs_home.cli("apicrypt", "identity", "import", str(us_cert), "--key", str(us_key)).stdout
    assert "identity imported: PACS Radiologie Nord <pacs@medical59.apicrypt.org>" in out
    assert "pacs@medical59.apicrypt.org" in pacs_home.cli("apicrypt", "identity", "show").stdout
    bad = pacs_home.cli("apicrypt", "cert", "import", str(us_key), check=False)
    assert bad.returncode == 1 and "no certificate found" in bad.stderr


def test_domain_patterns_decide_which_mail_is_protected(tmp_path, smtp, pki):
    pacs = apicrypt_pacs(tmp_path / "home", "sqlite:///index.db", smtp)
    with connection():
        directory.import_identity(pacs, pki["us"].cert_pem() + pki["us"].key_pem())
    # look-alike domains are not APICrypt: they get the mail as any other domain
    pacs.send_mail(["x@medical69.apicrypt.org.evil.example"], "s", "clear one")
    pacs.send_mail(["x@notapicrypt.org"], "s", "clear two")
    assert [j.state for j in run_mail_jobs(pacs)] == ["done", "done"]

    with connection():
        pacs.save_plugin_settings(
            "apicrypt", {"domain_patterns": ["*.apicrypt.org", "mss.example"]}
        )
    pacs.send_mail(["Dr.Who@MSS.example"], "s", SECRET_PHRASE)
    [job] = run_mail_jobs(pacs)
    assert job.state == "failed" and "no certificate for dr.who@mss.example" in job.last_error
    assert len(smtp.received) == 2
