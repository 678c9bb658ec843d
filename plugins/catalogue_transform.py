"""SageMakerTransformOperator that can run the job's data plane locally.

With `CATSEARCH_TRANSFORM_BACKEND=sagemaker` this is the provider's operator,
unchanged. With `local`, the same CreateTransformJob request is first sent to
the SageMaker control plane (moto records the job), then executed by the local
batch-transform runner, which calls the very handler SageMaker would and
writes `<input key>.out` under the output path. The DAG has the same shape
either way.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTransformOperator


class CatalogueTransformOperator(SageMakerTransformOperator):
    def execute(self, context: Any) -> dict:
        from catalogue_search.settings import Settings

        result = super().execute(context)
        settings = Settings.from_env()
        if settings.transform_backend != "local":
            return result
        from catalogue_search import airflow_clients
        from catalogue_search_dev.local_transform import run_transform_job
        from catalogue_search_dev.localenv import cache_home

        request = self.config.get("Transform", self.config)
        self.log.info("running transform job %s with the local batch-transform runner", request["TransformJobName"])
        report = run_transform_job(
            request,
            s3_client=airflow_clients.s3(settings),
            sagemaker_client=airflow_clients.sagemaker(settings),
            cache_dir=cache_home() / "models",
            log=self.log,
        )
        summary = report.as_dict()
        self.log.info(
            "local transform: %s of %s inputs encoded, %s answered with an error record, %s failed, "
            "%s records inside them answered with an error record",
            summary["succeeded"],
            summary["total"],
            len(summary["error_records"]),
            len(summary["failed"]),
            len(summary["record_errors"]),
        )
        return result
