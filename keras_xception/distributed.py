"""Distribution strategies and local multi-worker launches.

The code lives in `keras_xception.training.distributed` (strategies,
`TF_CONFIG`) and `keras_xception.training.launcher` (local workers).
"""

from keras_xception.training.distributed import (  # noqa: F401
    STRATEGIES,
    TESTED_KERAS,
    check_keras_version,
    cluster_size,
    get_strategy,
    is_chief,
    multi_worker,
    multi_worker_trainer,
    replicas,
    save_model,
    strategy_scope,
    task_id,
    tf_config,
    worker_dir,
)
from keras_xception.training.launcher import (  # noqa: F401
    WorkerFailed,
    free_ports,
    launch_local_workers,
    local_tf_configs,
    watch_launcher,
)
