"""Imported by every cohort worker as it starts (a Dask preload), so that no task pays for imports.

`local_client` preloads it; on a cluster, `dask worker tcp://HOST:8786 --preload tuckerscope.core.cohorts.worker`.
Besides the task code it imports what the pipeline imports lazily on first use: nnU-Net's network builder,
preprocessing and predictor, TS's reorientation and resampling, surface-distance, and torch._dynamo, which
torch imports on the first meta-device pass through a normalisation (the Tucker engine's shape inference):
2-3 s on this machine that would otherwise land in the first task of every worker.
"""

import nnunetv2.inference.predict_from_raw_data  # noqa: F401
import nnunetv2.utilities.get_network_from_plans  # noqa: F401
import nnunetv2.utilities.plans_handling.plans_handler  # noqa: F401
import surface_distance  # noqa: F401
import torch._dynamo  # noqa: F401
import totalsegmentator.alignment  # noqa: F401
import totalsegmentator.resampling  # noqa: F401

import tuckerscope.core.cohorts.tasks  # noqa: F401
