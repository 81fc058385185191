"""Drop the index on carnation_jobs.next_run_time.

No query reads through it (the scheduler decides what is due in memory; the console reads jobs by id or all of
them), yet every fire rewrites next_run_time, so the index was updated about a thousand times a second at 10,000
jobs every 10 s: 27-45 % of the database server's CPU for the jobstore's batch UPDATE on PostgreSQL and MariaDB,
and of the writer's own on SQLite (bench/README.md, F22). On PostgreSQL its absence also lets those updates be HOT.

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_carnation_jobs_next_run_time", table_name="carnation_jobs")


def downgrade() -> None:
    op.create_index("ix_carnation_jobs_next_run_time", "carnation_jobs", ["next_run_time"])
