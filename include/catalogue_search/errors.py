"""The one error type for failures a retry cannot fix.

A task that raises `PermanentError` fails at once, on its first try, with the
message (the DAG turns it into Airflow's `AirflowFailException`): a bad Param,
a shard that does not exist, an index that failed validation, a catalogue that
would shrink too much. Anything else (a timeout, a 503) is retried.
"""

from __future__ import annotations


class PermanentError(Exception):
    """A deterministic failure: retrying the same task with the same inputs gives the same result."""
