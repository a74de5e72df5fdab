"""Each picture's place in its job: `images.index`, unique per job.

A job resumed after a crash makes only the pictures it does not have yet; the database refuses a
second picture at the same place. Pictures already in a gallery are numbered in the order their
request made them (the `index` in their settings), ties by age, so galleries where a resumed job
made a picture twice keep every picture.

Revision ID: 0003_image_index
Revises: 0002_purchases
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_image_index"
down_revision = "0002_purchases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("index", sa.Integer, nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        index_in_settings = "(settings_json::json ->> 'index')::integer"
    else:
        index_in_settings = "json_extract(settings_json, '$.index')"
    op.execute(
        'UPDATE images SET "index" = (SELECT numbered.n FROM ('
        "  SELECT id, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY"
        f"    COALESCE({index_in_settings}, 0), created, id) - 1 AS n FROM images"
        ") AS numbered WHERE numbered.id = images.id)"
    )
    op.create_index("images_one_per_place", "images", ["job_id", "index"], unique=True)


def downgrade() -> None:
    op.drop_index("images_one_per_place", "images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("index")
