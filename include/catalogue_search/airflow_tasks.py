"""The one task body of every DAG: settings, clients, the run plan, fail-fast, a time limit.

A DAG file declares a task as a plain function whose first argument is the
task's `TaskEnv`:

    @catalogue_task("load", trigger_rule="none_failed")
    def load_index(env: TaskEnv, run_plan: dict) -> dict:
        from catalogue_search import ingest

        return ingest.load_index(env.settings, env.s3, env.opensearch, env.plan)

`catalogue_task` makes it an Airflow task whose `execution_timeout` is the
settings' `<kind>_timeout_s`, and runs the body with checked settings, clients
built on first use, the run plan parsed from the `run_plan` argument, and every
error no retry can fix (`errors.is_permanent`) failing the task at once.
Airflow is imported only when a DAG file uses this module (never by the core).
"""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

from catalogue_search import airflow_clients
from catalogue_search.settings import Settings

log = logging.getLogger(__name__)

# The asset alias every task that moves a read alias declares as its outlet; each event it
# records names the concrete index asset of the alias that was moved (`index_asset`).
INDEX_ASSET_ALIAS = "catalogue-search-index"
# Past a task's time limit, how often a body still unwinding is interrupted again.
UNWIND_EVERY_S = 5.0


def index_asset(alias: str):
    """The Asset of one read alias: named by the alias only (no host, no credentials)."""
    from airflow.sdk import Asset

    return Asset(name=f"catalogue-search-index/{alias}", uri=f"x-catalogue-search://index/{alias}")


def index_asset_alias():
    from airflow.sdk import AssetAlias

    return AssetAlias(INDEX_ASSET_ALIAS)


def model_asset(settings: Settings):
    """The Asset of the artifact `catalogue_ingest` encodes with: an event means a new model was promoted."""
    from airflow.sdk import Asset

    return Asset(
        name=f"catalogue-search-model/{settings.model_slug}", uri=f"x-catalogue-search://model/{settings.model_slug}"
    )


def ingest_schedule(settings: Settings):
    """The re-index's schedule: the cron schedule, or a promoted model's Asset event, whichever comes first."""
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    if not settings.schedule:
        return [model_asset(settings)]
    cron = CronTriggerTimetable(settings.schedule, timezone="UTC")
    return AssetOrTimeSchedule(timetable=cron, assets=[model_asset(settings)])


def dag_args(settings: Settings, run_limit: str = "dagrun") -> dict[str, Any]:
    """What every DAG shares: a start date in the past (an unpaused scheduled DAG runs its latest slot at
    once), no catch-up, one active run, the task defaults and the run's time limit."""
    return {
        "start_date": settings.start_datetime,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": settings.dag_default_args(),
        "dagrun_timeout": settings.timeout(run_limit),
    }


def sagemaker_job_args(settings: Settings, kind: str) -> dict[str, Any]:
    """What every task that runs a SageMaker job shares (the provider's transform and training
    operators): deferred polling, the time limit of its `kind` of work, and the rerun policy."""
    limit = int(settings.timeout(kind).total_seconds())
    return {
        "aws_conn_id": settings.aws_conn_id,
        "wait_for_completion": True,
        # The triggerer polls the job; no worker is held for the hours it may run.
        "deferrable": True,
        "check_interval": settings.transform_poll_seconds,
        "max_ingestion_time": limit,
        "max_attempts": limit // settings.transform_poll_seconds,
        "execution_timeout": settings.timeout(kind),
        # One job per run; a retry after a half-done job starts a new, timestamped one.
        "check_if_job_exists": True,
        "action_if_job_exists": "timestamp",
    }


@dataclass
class TaskEnv:
    """What a task body needs: the settings, the Airflow context, clients and the run plan."""

    settings: Settings
    context: Mapping[str, Any]
    run_plan: dict | None = None

    @cached_property
    def s3(self):
        return airflow_clients.s3(self.settings)

    @cached_property
    def opensearch(self):
        return airflow_clients.opensearch(self.settings)

    @cached_property
    def sagemaker(self):
        return airflow_clients.sagemaker(self.settings)

    @cached_property
    def plan(self):
        """The run's `ingest.RunPlan`, from the task's `run_plan` argument (the plan task's XCom)."""
        from catalogue_search import ingest

        if self.run_plan is None:
            raise TypeError("this task has no run_plan argument")
        return ingest.RunPlan.from_dict(self.run_plan)

    @property
    def params(self) -> dict[str, Any]:
        return self.context["params"]

    @property
    def conf(self) -> dict[str, Any] | None:
        return self.context["dag_run"].conf

    @property
    def run_id(self) -> str:
        return self.context["run_id"]

    def announced_index(self) -> dict[str, Any] | None:
        """The newest index-asset event that triggered this run (its `extra`), None for a manual run."""
        events = [e for found in (self.context.get("triggering_asset_events") or {}).values() for e in found]
        return max(events, key=lambda e: e.timestamp).extra if events else None

    def announce_index(self, alias: str, index: str, action: str, **extra: Any) -> None:
        """Record an event of `alias`'s index asset: the alias now serves `index` (published or rolled back)."""
        event = {"alias": alias, "index": index, "action": action, **extra}
        self.context["outlet_events"][index_asset_alias()].add(index_asset(alias), extra=event)
        log.info("asset event: %s -> %s", index_asset(alias).name, event)


@contextmanager
def task_env(context: Mapping[str, Any] | None = None, run_plan: dict | None = None) -> Iterator[TaskEnv]:
    """A `TaskEnv` inside `fail_fast`: missing settings and every permanent error fail the task at once."""
    with airflow_clients.fail_fast():
        if context is None:
            from airflow.sdk import get_current_context

            context = get_current_context()
        yield TaskEnv(Settings.from_env().check(), context, run_plan)


@contextmanager
def ends_at_time_limit(limit: timedelta | None, every: float = UNWIND_EVERY_S) -> Iterator[None]:
    """Make the task's time limit end the body even where a thread pool waits for hung calls.

    Airflow's `execution_timeout` raises AirflowTaskTimeout once, in the main thread
    (SIGALRM). Raised inside `with ThreadPoolExecutor(...)`, it waits in the pool's
    shutdown for every call in flight and every call still queued, each against the
    hung service. So, from `every` seconds after the limit, SIGALRM is sent again
    (the same handler, the same exception) until the body has unwound.
    """
    if not limit or threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None):
        yield  # no time limit handler installed: not running under Airflow's task runner
        return
    done = threading.Event()
    main = threading.main_thread().ident

    def nudge() -> None:
        if done.wait(limit.total_seconds() + every):
            return
        while not done.is_set():
            log.error("the task is past its time limit (%s) and still unwinding: interrupting it again", limit)
            signal.pthread_kill(main, signal.SIGALRM)
            done.wait(every)

    threading.Thread(target=nudge, name="time-limit", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def catalogue_task(timeout: str = "task", *, short_circuit: bool = False, **task_kwargs: Any) -> Callable:
    """Make `fn(env, ...)` an Airflow task (`@task`, or `@task.short_circuit`) run inside `task_env`.

    `timeout` names the settings' time limit (`<timeout>_timeout_s`) that becomes the
    task's `execution_timeout`; `task_kwargs` go to the decorator (trigger_rule, outlets, ...).
    """
    from airflow.sdk import task

    execution_timeout = Settings.from_env().timeout(timeout)

    def decorate(fn: Callable) -> Any:
        signature = inspect.signature(fn)
        parameters = list(signature.parameters.values())
        if not parameters or parameters[0].name != "env":
            raise TypeError(f"task body {fn.__name__} must take the TaskEnv as its first argument, `env`")

        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            run_plan = signature.bind(None, *args, **kwargs).arguments.get("run_plan")
            with task_env(run_plan=run_plan) as env, ends_at_time_limit(env.context["task"].execution_timeout):
                return fn(env, *args, **kwargs)

        # Airflow sees the body's own arguments (its XCom inputs), not the env.
        body.__signature__ = signature.replace(parameters=parameters[1:])
        body.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "env"}
        decorator = task.short_circuit if short_circuit else task
        return decorator(execution_timeout=execution_timeout, **task_kwargs)(body)

    return decorate
