"""Search smoke test: runs whenever the read alias's index Asset gets an event (a publish or a rollback)."""

from __future__ import annotations

from airflow.sdk import Param, dag

from catalogue_search.airflow_tasks import TaskEnv, catalogue_task, dag_args, index_asset
from catalogue_search.settings import Settings

SETTINGS = Settings.from_env()

DOC = """
### Search smoke test

Scheduled on the index Asset of the read alias `CATSEARCH_INDEX_ALIAS`
(`catalogue-search-index/<alias>`): `catalogue_ingest`'s **swap_alias** and
`catalogue_rollback`'s **roll_back** record an event of it each time they move
the alias, naming the index it now serves. A trial run on another alias records
an event of that alias's own Asset and does not trigger this DAG.

**check_search**: one product of the served index, drawn with the run as seed,
must be found first by its own image and by its own title, through the configured
query encoder (`CATSEARCH_QUERY_ENCODER`: the in-process model, or the SageMaker
endpoints). It fails at once, naming the product, when the encoder and the index
disagree (another model deployed: run `query_endpoints_deploy`). Triggered by hand,
it checks the `alias` Param.
"""


@dag(
    dag_id="catalogue_smoke_test",
    schedule=[index_asset(SETTINGS.index_alias)],
    **dag_args(SETTINGS),
    tags=["catalogue-search", "opensearch", "search", "smoke-test"],
    doc_md=DOC,
    params={"alias": Param(SETTINGS.index_alias, type="string", pattern="^[a-z0-9][a-z0-9_-]*$")},
)
def catalogue_smoke_test():
    @catalogue_task("validate")
    def check_search(env: TaskEnv) -> dict:
        from catalogue_search import smoke

        event = env.announced_index() or {"alias": env.params["alias"], "index": ""}
        return smoke.check_search(env.settings, env.s3, env.opensearch, event["alias"], event["index"], seed=env.run_id)

    check_search()


catalogue_smoke_test()
