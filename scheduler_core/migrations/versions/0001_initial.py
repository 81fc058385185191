"""Initial schema: jobs as JSON rows, run history, meta counters, users, leader lease.

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "carnation_jobs",
        sa.Column("id", sa.String(191), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("next_run_time", sa.Double, nullable=True),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("broken", sa.Text, nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_index("ix_carnation_jobs_next_run_time", "carnation_jobs", ["next_run_time"])
    op.create_table(
        "carnation_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(191), nullable=False),
        sa.Column("scheduled_at", sa.Double, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Double, nullable=True),
        sa.Column("finished_at", sa.Double, nullable=True),
        sa.Column("duration", sa.Double, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("return_value", sa.Text, nullable=True),
        sa.Column("exception", sa.Text, nullable=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("recorded_at", sa.Double, nullable=False),
        sa.UniqueConstraint("job_id", "scheduled_at", name="uq_carnation_runs_job_scheduled"),
    )
    op.create_index("ix_carnation_runs_job_id_id", "carnation_runs", ["job_id", "id"])
    op.create_index("ix_carnation_runs_recorded_at", "carnation_runs", ["recorded_at"])
    op.create_index("ix_carnation_runs_outcome_recorded_at", "carnation_runs", ["outcome", "recorded_at"])
    meta = op.create_table(
        "carnation_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(meta, [{"key": "jobs_seq", "value": 0}])
    op.create_table(
        "carnation_users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(150), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "carnation_run_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(191), nullable=False),
        sa.Column("requested_at", sa.Double, nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
    )
    op.create_table(
        "carnation_leader",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("acquired_at", sa.Double, nullable=False),
        sa.Column("heartbeat_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    for table in ("carnation_leader", "carnation_run_requests", "carnation_users", "carnation_meta", "carnation_runs", "carnation_jobs"):
        op.drop_table(table)
