"""Fine-tuning on the catalogue's own (image, title) pairs (`catalogue_finetune`, docs/finetune.md).

- `data`: the published catalogue's pairs, split by product, as JSON Lines;
- `job`: the training job's source directory and CreateTrainingJob request;
- `package`: the trained weights as a new artifact with its lineage;
- `gate`: base against fine-tuned on held-out products, the gate, the promotion;
- `steps`: the DAG's steps that join them.
"""

from catalogue_search.finetune.data import Snapshot, export_pairs, split
from catalogue_search.finetune.gate import decide, measure_both, promote
from catalogue_search.finetune.job import Hyperparameters, prepare_job, training_image_uri
from catalogue_search.finetune.package import package_model
from catalogue_search.finetune.steps import evaluate_and_decide, hyperparameters, package_trained

__all__ = [
    "Hyperparameters",
    "Snapshot",
    "decide",
    "evaluate_and_decide",
    "export_pairs",
    "hyperparameters",
    "measure_both",
    "package_model",
    "package_trained",
    "prepare_job",
    "promote",
    "split",
    "training_image_uri",
]
