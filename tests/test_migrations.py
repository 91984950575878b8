"""An existing database is brought to the current schema without losing rows."""

from pacscore.models import User, connection, db


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
