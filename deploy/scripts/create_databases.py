"""Create the Postgres databases the configured services use, if they are missing (idempotent).

    .venv/bin/python deploy/scripts/create_databases.py [--maintenance-db postgres]

Reads the same variables as the code location (resources/settings.py) and, for each service on
Postgres -- the Dagster instance (DAGSTER_PG_*), MLflow (MLFLOW_TRACKING_URI=postgresql://...) and
the Feast registry (AGENTOPS_FEAST_REGISTRY=postgresql+psycopg://...) -- connects to the
maintenance database on the same server with the same credentials and runs CREATE DATABASE
unless it exists. Tables are not created here: Dagster, MLflow (alembic) and Feast create their
own on first use. Needs a role allowed to create databases (CREATEDB); exits 1 with one line per
failure otherwise. Services not on Postgres are skipped.
"""

from __future__ import annotations

import argparse
import sys

from agentops_pipelines.resources.settings import load_settings


def postgres_targets(settings) -> dict[str, str]:
    """{service: SQLAlchemy URL} for each configured service whose store is Postgres."""
    targets = {}
    if settings.dagster_postgres is not None:
        targets["Dagster storage"] = settings.dagster_postgres.url()
    if settings.mlflow_tracking_uri.startswith("postgres"):
        targets["MLflow tracking"] = settings.mlflow_tracking_uri
    if settings.feast_registry.startswith("postgres"):
        targets["Feast registry"] = settings.feast_registry
    return targets


def ensure_database(url: str, maintenance_db: str = "postgres") -> bool:
    """Create the database ``url`` names unless it exists; True if it was created."""
    import psycopg2
    from psycopg2 import errors, sql
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = psycopg2.connect(host=parsed.host or "127.0.0.1", port=parsed.port or 5432,
                            user=parsed.username, password=parsed.password or None,
                            dbname=maintenance_db, connect_timeout=5)
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(parsed.database)))
            except errors.DuplicateDatabase:  # created concurrently
                return False
            return True
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maintenance-db", default="postgres",
                        help="database to connect to while creating the others (default: postgres)")
    args = parser.parse_args(argv)
    settings = load_settings(strict=False)
    targets = postgres_targets(settings)
    if not targets:
        print("nothing to create: no service is configured on Postgres")
        return 0
    failed = False
    from sqlalchemy.engine import make_url

    for service, url in targets.items():
        parsed = make_url(url)
        where = f"{parsed.username}@{parsed.host}:{parsed.port or 5432}/{parsed.database}"
        try:
            created = ensure_database(url, args.maintenance_db)
        except Exception as exc:  # noqa: BLE001 - one line per failure, no traceback
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            print(f"FAIL     {service} ({where}): {first}", file=sys.stderr)
            failed = True
            continue
        print(f"{'created' if created else 'exists '}  {service} ({where})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
