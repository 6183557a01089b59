"""Set-up run in every worker process of semrec's in-process Ray (``worker_process_setup_hook``). Kept to the
standard library: every Ray worker imports it, read tasks included."""

import logging

# Ray Train 2.60 starts a PlacementGroupCleaner beside every run; it asks the State API once a second whether the
# run's controller is alive, and the State API is served by the dashboard, which the in-process Ray does not start.
# Each failed question logs a warning: ~1 line a second for a whole training run. Without a dashboard the cleaner
# cannot act anyway, and the in-process Ray's placement groups end with the driver, so the warning says nothing.
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_local_worker() -> None:
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)
