"""Roll the catalogue back: move the read alias to the previous served index."""

from __future__ import annotations

from airflow.sdk import Param, dag

from catalogue_search.airflow_tasks import TaskEnv, catalogue_task, dag_args, index_asset_alias
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
catalogue. Records an event of the alias's index Asset
(`catalogue-search-index/<alias>`) naming the index it serves again, as a
publish does. Same as `./dev rollback [--alias A]` (which records no event).
"""


@dag(
    dag_id="catalogue_rollback",
    schedule=None,
    **dag_args(SETTINGS),
    tags=["catalogue-search", "opensearch", "rollback"],
    doc_md=DOC,
    params={"alias": Param(SETTINGS.index_alias, type="string", pattern="^[a-z0-9][a-z0-9_-]*$")},
)
def catalogue_rollback():
    @catalogue_task(outlets=[index_asset_alias()])
    def roll_back(env: TaskEnv) -> dict:
        from catalogue_search import ingest

        ingest.check_conf(env.conf, ["alias"])
        rolled = ingest.rollback(env.settings, env.s3, env.opensearch, env.params["alias"])
        env.announce_index(rolled["alias"], rolled["to"], "rollback", previous=rolled["from"])
        return rolled

    roll_back()


catalogue_rollback()
