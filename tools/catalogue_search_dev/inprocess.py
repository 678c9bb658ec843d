"""The handler in this process, answering as the container would: for tests that need the speed.

SageMaker runs the handler in its serving toolkit on TorchServe, and so does
the local SageMaker server (`model_server`). Starting that container costs
tens of seconds, so tests that exercise what is around the model (the
transform runner's bookkeeping, the chunk stores) may talk to
`InProcessModel` instead: the same `code/inference.py`, the same
`transform_fn` with its status codes, the same `Reply`, no TorchServe. It is
never what the local stack runs.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalogue_search.handler import LoadedHandler, load_handler_from_artifact
from catalogue_search_dev.model_server import Reply

log = logging.getLogger(__name__)


class _Context:
    """The part of TorchServe's request context that `transform_fn` uses."""

    def __init__(self) -> None:
        self.status = 200

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status = code


@dataclass
class InProcessModel:
    """A loaded handler behind the `invoke` of a model endpoint (see the module docstring)."""

    handler: LoadedHandler

    @classmethod
    def from_artifact(
        cls, model_data_url: str, env: Mapping[str, str], s3_client: Any, cache_dir: str | Path | None = None
    ) -> InProcessModel:
        log.info("the handler of %s runs IN PROCESS (tests only; SageMaker runs it in TorchServe)", model_data_url)
        handler = load_handler_from_artifact(
            model_data_url, env.get("ENCODE_TYPE", "IMAGE"), s3_client=s3_client, cache_dir=cache_dir, env=env
        )
        handler.model.s3_client = s3_client  # the container would fetch chunk records with its role
        return cls(handler)

    def invoke(self, body: bytes, content_type: str, accept: str | None, timeout: float = 0) -> Reply:
        context = _Context()
        try:
            answer, response_type = self.handler.module.transform_fn(
                self.handler.model, body, content_type, accept or "application/json", context
            )
        except Exception as exc:  # the toolkit's 500: message and traceback
            return Reply(500, "text/plain", f"{exc}\n{traceback.format_exc()}".encode())
        return Reply(context.status, response_type, answer)
