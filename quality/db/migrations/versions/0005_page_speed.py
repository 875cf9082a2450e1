"""page speed: change counters, materialised results, indexes

For the pages at the large scale (10^5 studies, 10^6 annotations; ``quality.db.aggregates``):

- ``data_changes``: one write counter per tracked table (``quality.db.schema.TRACKED_TABLES``),
  seeded at 0 and bumped by triggers on every INSERT, UPDATE and DELETE (and TRUNCATE on
  PostgreSQL): ``FOR EACH STATEMENT`` on PostgreSQL, ``FOR EACH ROW`` on SQLite, which has
  no statement triggers. The counter moves inside the writing transaction.
- ``materialized_results``: heavy page results computed ahead by the writers, with the
  counters of their inputs (``stamp``), unique per ``(kind, key)``.
- indexes found with ``EXPLAIN ANALYZE`` on the large demo (see ``INDEXES``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# A copy, not an import: a migration must not move when the models do.
TRACKED = (
    "sources",
    "studies",
    "series",
    "images",
    "ingest_errors",
    "datasets",
    "dataset_versions",
    "dataset_items",
    "version_labels",
    "annotators",
    "labeling_tasks",
    "annotations",
    "reference_labels",
    "models",
    "model_versions",
    "predictions",
    "image_quality",
    "check_runs",
    "check_results",
)

# name -> (table, columns)
INDEXES: dict[str, tuple[str, list[str]]] = {
    # The newest prediction of a version for an image (the worklist's pool, the model
    # comparison): EXPLAIN ANALYZE on 2·10^5 predictions showed a Sort of heap rows under
    # every per-image probe of ix_predictions_version_image; with created_at and id in the
    # index the probe is an Index Only Scan Backward with LIMIT 1 (pool query 2.4 s -> 1.6 s).
    "ix_predictions_version_image_newest": (
        "predictions",
        ["model_version_id", "image_id", "created_at", "id"],
    ),
}

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION quality_note_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE data_changes SET version = version + 1, changed_at = now()
    WHERE name = TG_TABLE_NAME;
    RETURN NULL;
END;
$$
"""


def upgrade() -> None:
    op.create_table(
        "data_changes",
        sa.Column("name", sa.String(length=64), nullable=False, comment="table name"),
        sa.Column(
            "version",
            sa.BigInteger(),
            server_default="0",
            nullable=False,
            comment="bumped by every write",
        ),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="time of the last write",
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_data_changes")),
        comment="write counters of the tracked tables (quality.db.aggregates)",
    )
    op.create_table(
        "materialized_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "kind", sa.String(length=64), nullable=False, comment="what was computed (a builder)"
        ),
        sa.Column("key", sa.String(length=512), nullable=False, comment="its arguments, as JSON"),
        sa.Column(
            "stamp",
            sa.String(length=1024),
            nullable=False,
            comment="input table versions, as JSON",
        ),
        sa.Column(
            "built_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("build_s", sa.Float(), nullable=True, comment="seconds the build took"),
        sa.Column(
            "payload",
            sa.LargeBinary(),
            nullable=False,
            comment="the result, pickled and zlib-compressed",
        ),
        sa.Column("n_bytes", sa.BigInteger(), nullable=False, comment="size of the payload"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_materialized_results")),
        sa.UniqueConstraint("kind", "key", name=op.f("uq_materialized_results_kind_key")),
    )
    changes = sa.table("data_changes", sa.column("name", sa.String), sa.column("version"))
    op.bulk_insert(changes, [{"name": t, "version": 0} for t in TRACKED])

    if op.get_context().dialect.name == "sqlite":
        for table in TRACKED:
            for event in ("INSERT", "UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER note_{event.lower()}_{table} AFTER {event} ON {table} "
                    f"BEGIN UPDATE data_changes SET version = version + 1, "
                    f"changed_at = CURRENT_TIMESTAMP WHERE name = '{table}'; END"
                )
    else:
        # Payloads are zlib-compressed by the writer: no second (pglz) compression, whose
        # decompression on every read cost about 1 s per 60 MB payload.
        op.execute("ALTER TABLE materialized_results ALTER COLUMN payload SET STORAGE EXTERNAL")
        op.execute(_PG_FUNCTION)
        for table in TRACKED:
            op.execute(
                f"CREATE TRIGGER note_change_{table} AFTER INSERT OR UPDATE OR DELETE "
                f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION quality_note_change()"
            )
            op.execute(
                f"CREATE TRIGGER note_truncate_{table} AFTER TRUNCATE "
                f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION quality_note_change()"
            )

    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, (table, _columns) in INDEXES.items():
        op.drop_index(name, table_name=table)
    if op.get_context().dialect.name == "sqlite":
        for table in TRACKED:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS note_{event}_{table}")
    else:
        for table in TRACKED:
            op.execute(f"DROP TRIGGER IF EXISTS note_truncate_{table} ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS note_change_{table} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS quality_note_change()")
    op.drop_table("materialized_results")
    op.drop_table("data_changes")
