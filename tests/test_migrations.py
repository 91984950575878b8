"""An existing database is brought to the current schema without losing rows."""

from pacscore.db import connection, db, is_sqlite
from pacscore.models import ApiToken, User


def test_columns_added_to_a_model_reach_an_existing_table(make_pacs):
    pacs = make_pacs()
    with connection():
        User.create(login="alice", first_name="Alice")
        # simulate a database created before User gained these fields
        for column in ("services", "locked_until"):
            db.execute_sql(f'ALTER TABLE "user" DROP COLUMN {column}')
        assert "services" not in {c.name for c in db.get_columns("user")}

    pacs.prepare()  # what every start-up does

    with connection():
        alice = User.get(User.login == "alice")
        assert alice.first_name == "Alice"
        assert alice.services == "[]"  # the default filled into the old row
        assert alice.locked_until is None
        User.create(login="bob", services='["CARDIO"]')


def test_a_column_added_keeps_the_rows_that_reference_the_table(make_pacs):
    """On SQLite, making the new column NOT NULL rebuilds the table; with foreign keys
    enforced, dropping the old one deleted, by ON DELETE CASCADE, every row pointing
    at it (here the users' API tokens): foreign keys are off while it is rebuilt."""
    pacs = make_pacs()
    with connection():
        alice = User.create(login="alice")
        ApiToken.create(user=alice, name="scripts", token_hash="a" * 64)
        db.execute_sql('ALTER TABLE "user" DROP COLUMN services')

    pacs.prepare()

    with connection():
        assert [t.name for t in ApiToken.select()] == ["scripts"]
        assert User.get(User.login == "alice").services == "[]"
        if is_sqlite():
            assert db.pragma("foreign_keys") == 1  # enforced again
            assert db.execute_sql("PRAGMA foreign_key_check").fetchall() == []
