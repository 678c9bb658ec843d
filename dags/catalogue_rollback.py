"""Roll the catalogue back: move the read alias to the previous served index."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from catalogue_search.settings import Settings

SETTINGS = Settings.from_env()

DOC = """
### Catalogue rollback

Moves the read alias back to the index that served before the current one, in
one atomic `_aliases` call (readers never see a missing alias). Only indices
that served are rollback targets; `CATSEARCH_INDEX_RETENTION` (default 1) says
how many are kept. The index rolled back from stops being a rollback target and
is removed by the next `catalogue_ingest` run's clean-up. The per-shard catalogue
state goes back with the index, so the next backfill builds on the restored
catalogue. Same as `./dev rollback [--alias A]`.
"""


@dag(
    dag_id="catalogue_rollback",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args=SETTINGS.dag_default_args(),
    tags=["catalogue-search", "opensearch", "rollback"],
    doc_md=DOC,
    params={"alias": Param(SETTINGS.index_alias, type="string", pattern="^[a-z0-9][a-z0-9_-]*$")},
)
def catalogue_rollback():
    @task
    def roll_back(params=None, dag_run=None) -> dict:
        from catalogue_search import airflow_clients, ingest

        with airflow_clients.fail_fast():
            ingest.check_conf(dag_run.conf, ["alias"])
            settings = airflow_clients.checked_settings()
            return ingest.rollback(
                settings, airflow_clients.s3(settings), airflow_clients.opensearch(settings), params["alias"]
            )

    roll_back()


catalogue_rollback()
