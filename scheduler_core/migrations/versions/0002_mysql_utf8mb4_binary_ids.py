"""MySQL/MariaDB: tables in utf8mb4 whatever the database's default charset, and job ids compared byte for byte
(the default collation is case-insensitive, so "Job1" and "job1" clashed there but not on SQLite or PostgreSQL).

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("carnation_jobs", "carnation_runs", "carnation_meta", "carnation_users", "carnation_leader",
          "carnation_run_requests")
ID_COLUMNS = (("carnation_jobs", "id"), ("carnation_runs", "job_id"), ("carnation_run_requests", "job_id"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "mysql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    for table, column in ID_COLUMNS:
        op.execute(f"ALTER TABLE {table} MODIFY {column} VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin "
                   "NOT NULL")


def downgrade() -> None:
    if op.get_bind().dialect.name != "mysql":
        return
    for table, column in ID_COLUMNS:
        op.execute(f"ALTER TABLE {table} MODIFY {column} VARCHAR(191) CHARACTER SET utf8mb4 "
                   "COLLATE utf8mb4_unicode_ci NOT NULL")
