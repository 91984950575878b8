"""``pacscore user add|unlock|list``: accounts from the command line."""

from __future__ import annotations

from pacscore.app import open_pacs
from pacscore.db import connection
from pacscore.models import User
from pacscore.users import log_in


def test_user_add_list_unlock(pacs_home):
    added = pacs_home.cli("user", "add", "rad1", "--profile", "radiologist",
                          "--service", "CARDIO", input="a long password\n")  # fmt: skip
    assert "rad1 added" in added.stdout
    again = pacs_home.cli("user", "add", "rad1", "--profile", "radiologist", check=False,
                          input="another password\n")  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr
    unknown = pacs_home.cli("user", "add", "x", "--profile", "boss", check=False, input="pw\n")
    assert unknown.returncode == 1 and "no profile named 'boss'" in unknown.stderr
    empty = pacs_home.cli("user", "add", "y", "--profile", "referring", check=False, input="")
    assert empty.returncode == 1 and "no password on stdin" in empty.stderr
    short = pacs_home.cli("user", "add", "z", "--profile", "referring", check=False,
                          input="short\n")  # fmt: skip
    assert short.returncode == 1 and "at least" in short.stderr
    listed = pacs_home.cli("user", "list").stdout
    assert "rad1\tradiologist\tactive\tlocal\tCARDIO" in listed
    assert "\ny\t" not in listed and "\nz\t" not in listed

    pacs = open_pacs(pacs_home.home, load_plugins=False)
    try:
        for _ in range(5):
            assert not log_in(pacs, "rad1", "wrong").success
        with connection():
            assert User.get(User.login == "rad1").status == "locked"
        assert not log_in(pacs, "rad1", "a long password").success
        assert "rad1 unlocked" in pacs_home.cli("user", "unlock", "rad1").stdout
        assert log_in(pacs, "rad1", "a long password").success
    finally:
        pacs.database.close_all()
    missing = pacs_home.cli("user", "unlock", "nobody", check=False)
    assert missing.returncode == 1 and "no user named" in missing.stderr
