"""Fine-tuning on the catalogue's own pairs: train, evaluate on held-out products, promote only a better model."""

from __future__ import annotations

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator
from airflow.sdk import Param, chain, dag

from catalogue_search.airflow_tasks import TaskEnv, catalogue_task, dag_args, model_asset, sagemaker_job_args
from catalogue_search.settings import Settings

SETTINGS = Settings.from_env()

DOC = """
### Catalogue fine-tuning

Fine-tunes the CLIP model `catalogue_ingest` encodes with on the published
catalogue's own (image, title) pairs, and promotes the result only if it finds
held-out products better (docs/finetune.md).

1. **export_pairs**: the products of the index the alias serves, split by
   product into train, validation and test (seeded, stratified by product type;
   no test product is trained on), as JSON Lines in the run's prefix.
2. **prepare_training**: the base artifact copied beside the run, the entry
   point's source directory (`training_code/train.py` with the artifact's
   vendored wheels), the CreateTrainingJob request.
3. **train_model**: the provider's `SageMakerTrainingOperator` (deferred while
   the job runs): CLIP's contrastive loss, the artifact's own preprocessing,
   the towers named by `unfreeze`, mixed precision on a GPU, checkpoints in
   /opt/ml/checkpoints (a spot interruption resumes).
4. **package_model**: a new model.tar.gz, new artifact version, lineage (base
   version, data snapshot, hyperparameters) in its `clip_config.json`.
5. **evaluate_models**: base and fine-tuned answer the same queries (each test
   product's title -> the test products' images); recall@1/5/10 and MRR against
   chance, to the log and `finetune/report.json`. The gate: promote only if
   text -> image recall@10 gains more than the noise of the sample. Otherwise
   the run ends here, with both figures, and nothing changes.
6. **promote_model**: the fine-tuned artifact becomes the configured one (the
   previous is kept), and an event of the model Asset schedules `catalogue_ingest`.
"""

PARAMS = {
    "alias": Param(
        SETTINGS.index_alias,
        type="string",
        pattern="^[a-z0-9][a-z0-9_-]*$",
        description="The alias whose served catalogue gives the pairs.",
    ),
    "lr": Param(1e-5, type="number", minimum=0, description="AdamW learning rate (0 trains nothing)."),
    "epochs": Param(2, type="integer", minimum=1, maximum=1000),
    "batch_size": Param(64, type="integer", minimum=2, maximum=65536, description="Pairs per contrastive batch."),
    "unfreeze": Param("both", enum=["image", "text", "both"], description="Which towers learn."),
    "seed": Param(0, type="integer", description="Seeds the split and the training."),
    "test_fraction": Param(0.2, type="number", exclusiveMinimum=0, exclusiveMaximum=1),
    "validation_fraction": Param(0.1, type="number", minimum=0, exclusiveMaximum=1),
}


def _training(config) -> SageMakerTrainingOperator:
    """The training job: the provider's operator, deferred while the job runs (no worker slot held)."""
    return SageMakerTrainingOperator(
        task_id="train_model", config=config, print_log=False, **sagemaker_job_args(SETTINGS, "training")
    )


@dag(
    dag_id="catalogue_finetune",
    schedule=SETTINGS.finetune_schedule or None,
    **dag_args(SETTINGS, "finetune_dagrun"),
    tags=["catalogue-search", "fine-tuning", "sagemaker"],
    doc_md=DOC,
    params=PARAMS,
)
def catalogue_finetune():
    @catalogue_task()
    def export_pairs(env: TaskEnv) -> dict:
        from catalogue_search import finetune

        p = env.params
        return finetune.export_pairs(
            env.settings,
            env.s3,
            env.opensearch,
            alias=p["alias"],
            run_key=env.run_id,
            seed=int(p["seed"]),
            test=float(p["test_fraction"]),
            validation=float(p["validation_fraction"]),
        ).as_dict()

    @catalogue_task(multiple_outputs=True)
    def prepare_training(env: TaskEnv, snapshot: dict) -> dict:
        from catalogue_search import finetune

        hyper = finetune.hyperparameters(env.params)
        image = finetune.training_image_uri(env.settings)
        return finetune.prepare_job(
            env.settings, env.s3, prefix=snapshot["prefix"], run_key=env.run_id, hyper=hyper, image_uri=image
        )

    @catalogue_task()
    def package_model(env: TaskEnv, snapshot: dict, base: dict, trained: dict) -> dict:
        from catalogue_search import finetune

        return finetune.package_trained(env.settings, env.s3, snapshot, base, trained, env.params)

    @catalogue_task("validate", short_circuit=True)
    def evaluate_models(env: TaskEnv, snapshot: dict, base: dict, tuned: dict) -> dict | None:
        from catalogue_search import finetune

        return finetune.evaluate_and_decide(env.settings, env.s3, snapshot, base, tuned)

    @catalogue_task(outlets=[model_asset(SETTINGS)])
    def promote_model(env: TaskEnv, decided: dict) -> dict:
        from catalogue_search import finetune

        promoted = finetune.promote(
            env.settings, env.s3, tuned_uri=decided["tuned"], base_version=decided["base_version"]
        )
        event = {**promoted, "figures": decided["figures"], "report": decided["report"]}
        env.context["outlet_events"][model_asset(env.settings)].extra = event
        return event

    snapshot = export_pairs()
    prepared = prepare_training(snapshot)
    train_model = _training(prepared["config"])
    packaged = package_model(snapshot, prepared["base"], train_model.output)
    decided = evaluate_models(snapshot, prepared["base"], packaged)
    chain(snapshot, prepared, train_model, packaged, decided, promote_model(decided))


catalogue_finetune()
