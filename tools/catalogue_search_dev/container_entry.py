"""The entry point of a local SageMaker container: AWS's toolkits, started as the DLC images start them.

Run by the local SageMaker server with the containers' Python (not the
project's: it has no catalogue_search and no open_clip), in the container's
own directory, which stands for /opt/ml (`SAGEMAKER_BASE_DIR`):

    python container_entry.py serve   # the PyTorch inference image: serving.main() on TorchServe
    python container_entry.py train   # the PyTorch training image: sagemaker-training's `train`

`serve` does what the image's `dockerd-entrypoint.py` does before
`sagemaker_pytorch_serving_container.serving.main()`: one model server worker
per CPU (`LOCAL_CONTAINER_CPUS`, when set, stands for the instance's CPU
count). Two adjustments let several containers share one machine, where
Docker would keep them apart, and change nothing in how the model is served:
- the toolkit writes TorchServe's configuration to /etc/sagemaker-ts.properties,
  one path for the whole machine; here it goes to the container's directory;
- the toolkit finds "its" TorchServe by scanning every process for TorchServe's
  main class and refuses to run beside another; here it takes the one started
  with its own configuration file.
Both also stop when the local server that started them is gone.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time


def exit_with_parent() -> None:
    """SIGTERM ourselves when the local server that started us is gone (we get another parent).

    The toolkit forwards SIGTERM to TorchServe, so a local server that was killed leaves no container behind.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def serve() -> None:
    exit_with_parent()
    # As dockerd-entrypoint.py: one worker per CPU of the instance (LOCAL_CONTAINER_CPUS sizes the local one).
    cpus = os.environ.pop("LOCAL_CONTAINER_CPUS", "") or str(multiprocessing.cpu_count())
    os.environ["SAGEMAKER_MODEL_SERVER_WORKERS"] = cpus
    import psutil
    from retrying import retry
    from sagemaker_pytorch_serving_container import serving, torchserve

    config = os.path.join(os.getcwd(), "sagemaker-ts.properties")
    torchserve.TS_CONFIG_FILE = config

    @retry(stop_max_delay=10 * 1000)
    def own_torchserve() -> psutil.Process:
        found = []
        for process in psutil.process_iter():
            try:
                if process.status() != psutil.STATUS_ZOMBIE and config in process.cmdline():
                    if torchserve.TS_NAMESPACE in process.cmdline():
                        found.append(process)
            except psutil.Error:
                continue
        if len(found) != 1:
            raise Exception("Torchserve model server was unsuccessfully started")
        return found[0]

    torchserve._retrieve_ts_server_process = own_torchserve
    serving.main()


def train() -> None:
    exit_with_parent()
    from sagemaker_training.cli.train import main

    main()


if __name__ == "__main__":
    commands = {"serve": serve, "train": train}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} serve|train")
    commands[sys.argv[1]]()
