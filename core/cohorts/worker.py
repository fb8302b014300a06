"""Imported by every cohort worker as it starts (a Dask preload), so that no task pays for imports.

`local_client` preloads it; on a cluster, `dask worker tcp://HOST:8786 --preload tuckerscope.core.cohorts.worker`.
Besides the task code (torch, nnU-Net, TS), it imports torch._dynamo, which torch imports lazily on the first
meta-device pass through a normalisation (the Tucker engine's shape inference and the FLOP count): 1-2 s
that would otherwise land in the first task of every worker.
"""

import torch._dynamo  # noqa: F401

import tuckerscope.core.cohorts.tasks  # noqa: F401
